/**
 * The package's chat template: the Jinja template of the checkpoint's tokenizer_config.json (manifest
 * `tokenizer.chat_template`), rendered as transformers' apply_chat_template renders it, with @huggingface/jinja (the
 * implementation transformers.js uses). The rendered text carries its own special tokens (BOS included where the
 * template writes one), so it is tokenized without any being added, as vLLM and transformers do.
 */
import { Template } from '@huggingface/jinja';

/** One message as the template sees it: its content already one text. */
export interface TemplateMessage {
  role: string;
  content: string;
  name?: string;
}

/** The special tokens a template may write (`{{ bos_token }}`, `{{ eos_token }}`). */
export interface TemplateTokens {
  bos_token: string;
  eos_token: string;
}

export class ChatTemplateError extends Error {}

export class ChatTemplate {
  private constructor(private readonly template: Template | null, private readonly parseError: string | null, private readonly tokens: TemplateTokens) {}

  /** A template that does not parse is kept as its error: completions still serve, and each chat request is told why it cannot. */
  static parse(source: string, tokens: TemplateTokens): ChatTemplate {
    try {
      return new ChatTemplate(new Template(source), null, tokens);
    } catch (error) {
      return new ChatTemplate(null, (error as Error).message, tokens);
    }
  }

  /** The prompt of a conversation, ending with the assistant's turn when `addGenerationPrompt`. */
  render(messages: readonly TemplateMessage[], addGenerationPrompt: boolean): string {
    if (this.template === null) throw new ChatTemplateError(`the model's chat template cannot be parsed: ${this.parseError}`);
    try {
      return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, ...this.tokens });
    } catch (error) {
      // raise_exception() in a template is how it refuses a conversation (for example roles out of order)
      throw new ChatTemplateError((error as Error).message);
    }
  }
}
