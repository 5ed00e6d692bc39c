/**
 * The package's Hugging Face tokenizer (byte-level BPE) with the manifest's special-token rules:
 * BOS is prepended when `add_bos`, and generation ends at `eos_token_id`.
 */
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { ModelPackageError } from '../errors.js';
import type { Manifest } from './manifest.js';

export class TextTokenizer {
  readonly eosId: number;
  readonly bosId: number;
  readonly addBos: boolean;
  readonly vocabSize: number;
  private readonly tokenizer: Tokenizer;
  private readonly pieces = new Map<number, string>();

  private constructor(tokenizer: Tokenizer, manifest: Manifest) {
    this.tokenizer = tokenizer;
    this.eosId = manifest.tokenizer.eos_token_id;
    this.bosId = manifest.tokenizer.bos_token_id;
    this.addBos = manifest.tokenizer.add_bos;
    this.vocabSize = manifest.dims.vocab_size;
  }

  static load(path: string, manifest: Manifest): TextTokenizer {
    let json: object;
    try {
      json = JSON.parse(readFileSync(path, 'utf8')) as object;
    } catch (error) {
      throw new ModelPackageError(`Tokenizer ${path} cannot be read: ${(error as Error).message}`);
    }
    // No clean-up of "tokenization spaces" (" ," -> ","): byte-level BPE decodes exactly, and the clean-up
    // rewrites text already streamed when the next token arrives, which would drop characters from deltas.
    const tokenizer = new Tokenizer(json, { clean_up_tokenization_spaces: false });
    const text = new TextTokenizer(tokenizer, manifest);
    const eos = tokenizer.token_to_id(manifest.tokenizer.eos_token);
    if (eos !== manifest.tokenizer.eos_token_id) {
      throw new ModelPackageError(
        `Tokenizer ${path} maps ${manifest.tokenizer.eos_token} to ${eos}, the manifest says eos_token_id ${manifest.tokenizer.eos_token_id}`,
      );
    }
    const size = tokenizer.get_vocab(true).size;
    if (size > manifest.dims.vocab_size) {
      throw new ModelPackageError(`Tokenizer ${path} has ${size} tokens, more than dims.vocab_size ${manifest.dims.vocab_size}`);
    }
    return text;
  }

  /** Token ids of `text`, without BOS. */
  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  /** The ids the model sees: BOS (when the package asks for it) followed by the text's tokens. */
  encodePrompt(text: string): number[] {
    const ids = this.encode(text);
    return this.addBos ? [this.bosId, ...ids] : ids;
  }

  /** Text of generated ids (special tokens dropped). */
  decode(ids: readonly number[]): string {
    return ids.length === 0 ? '' : this.tokenizer.decode(ids as number[], { skip_special_tokens: true });
  }

  /** The text of one token, as reported in logprobs (special tokens keep their name). */
  piece(id: number): string {
    const known = this.pieces.get(id);
    if (known !== undefined) return known;
    const piece = this.tokenizer.decode([id], { skip_special_tokens: false });
    this.pieces.set(id, piece);
    return piece;
  }
}
