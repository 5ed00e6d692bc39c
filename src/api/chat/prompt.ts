/**
 * A chat's prompt, and what adaptation reads of it.
 *
 * The prompt is the package's chat template rendered over the messages with the assistant's turn opened
 * (add_generation_prompt). Adaptation does not read that prompt: every chat shares the template's role markers
 * and special tokens, and usually a system prompt of the deployment, so the mean embedding of the whole prompt
 * would make all chats alike and their clusters meaningless. It reads the conversation's own words: the contents
 * of the user and assistant messages, joined by line breaks, with no template text. System (and developer)
 * messages are left out, since they are the part chats of one application share; a chat made of system messages
 * alone is read by them. docs/chat.md has the measurement behind this choice.
 */
import { ChatTemplateError, type ChatTemplate, type TemplateMessage } from '../../model/chat-template.js';
import type { ChatPrompt } from '../admission/admit.js';
import { chatTemplateRefusal, noChatTemplateError } from '../admission/refusals.js';
import type { ChatMessage } from '../schemas/chat.js';

const textOf = (content: ChatMessage['content']): string => (typeof content === 'string' ? content : content.map((part) => part.text).join(''));

/** The messages as templates expect them: each content one text, developer read as system. */
function templateMessages(messages: readonly ChatMessage[]): TemplateMessage[] {
  return messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: textOf(m.content),
    ...(m.name != null ? { name: m.name } : {}),
  }));
}

/** The conversation's words, as adaptation reads them. */
export function adaptationText(messages: readonly TemplateMessage[]): string {
  const turns = messages.filter((m) => m.role !== 'system');
  return (turns.length > 0 ? turns : messages).map((m) => m.content).join('\n');
}

export function chatPrompt(messages: readonly ChatMessage[], template: ChatTemplate | null, model: string, addGenerationPrompt = true): ChatPrompt {
  if (template === null) throw noChatTemplateError(model);
  const normalised = templateMessages(messages);
  try {
    return { rendered: template.render(normalised, addGenerationPrompt), adaptationText: adaptationText(normalised) };
  } catch (error) {
    if (error instanceof ChatTemplateError) throw chatTemplateRefusal(error.message);
    throw error;
  }
}
