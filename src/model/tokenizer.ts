/**
 * The package's Hugging Face tokenizer (byte-level BPE) with the manifest's special-token rules:
 * BOS is prepended when `add_bos`, and generation ends at `eos_token_id`.
 *
 * Two implementations of the same tokenizer.json, each where it fits:
 * - prompts are encoded by Hugging Face's own Rust library (`tokenizers`, the one training uses): it runs on
 *   libuv's thread pool, so a long prompt never blocks the event loop, and it is 8-15x faster than the
 *   JavaScript port on long words (16 KB of spaces: 26 ms instead of 200 ms);
 * - token texts and decoding, which the engine worker needs synchronously, use the JavaScript port
 *   (`@huggingface/tokenizers`); decoding does not touch its BPE cache.
 */
import { readFileSync } from 'node:fs';
import { Tokenizer } from '@huggingface/tokenizers';
import { Tokenizer as NativeTokenizer } from 'tokenizers';
import { ModelPackageError } from '../errors.js';
import type { Manifest } from './manifest.js';

/** GPT-2's byte-level alphabet: the character each byte is written as in the vocabulary, inverted. */
function byteLevelDecoder(): Map<string, number> {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(printable(b) ? b : 256 + extra++), b);
  return map;
}

/** The GPT-2 pre-tokenizer's split (ByteLevel with use_regex): every piece becomes at least one token. */
const PRE_TOKEN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** OpenAI's spelling of a token that is not whole UTF-8 characters: `bytes:\xe6\x97`. */
export function bytesPiece(bytes: Uint8Array): string {
  return `bytes:${Array.from(bytes, (b) => `\\x${b.toString(16).padStart(2, '0')}`).join('')}`;
}

/** The bytes a token text (as `piece()` writes it) stands for. */
export function pieceBytes(piece: string): Uint8Array {
  if (piece.startsWith('bytes:\\x')) {
    return Uint8Array.from(piece.slice('bytes:'.length).split('\\x').slice(1), (hex) => Number.parseInt(hex, 16));
  }
  return new TextEncoder().encode(piece);
}

export class TextTokenizer {
  readonly eosId: number;
  readonly bosId: number;
  readonly addBos: boolean;
  readonly vocabSize: number;
  /** Bytes of the longest token: a text of n bytes has at least ceil(n / maxTokenBytes) tokens. */
  readonly maxTokenBytes: number;
  private readonly pieces: string[] = [];
  /** The bytes of each token in a decoded text: none for special tokens (decoding skips them). */
  private readonly textBytes: Uint8Array[] = [];
  private readonly specials: string[];

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly native: NativeTokenizer,
    manifest: Manifest,
    json: { added_tokens?: Array<{ content: string; special?: boolean }> },
  ) {
    this.eosId = manifest.tokenizer.eos_token_id;
    this.bosId = manifest.tokenizer.bos_token_id;
    this.addBos = manifest.tokenizer.add_bos;
    this.vocabSize = manifest.dims.vocab_size;
    this.specials = (json.added_tokens ?? []).map((t) => t.content);
    const bytesOf = byteLevelDecoder();
    let longest = 1;
    for (const [token, id] of tokenizer.get_vocab(true) as Map<string, number>) {
      const special = this.specials.includes(token);
      const bytes = special ? new TextEncoder().encode(token) : Uint8Array.from(token, (ch) => bytesOf.get(ch) ?? 0);
      longest = Math.max(longest, bytes.length);
      let piece: string;
      try {
        piece = strictUtf8.decode(bytes);
      } catch {
        piece = bytesPiece(bytes);
      }
      this.pieces[id] = piece;
      this.textBytes[id] = special ? new Uint8Array(0) : bytes;
    }
    this.maxTokenBytes = longest;
  }

  static load(path: string, manifest: Manifest): TextTokenizer {
    let text: string;
    let json: object;
    try {
      text = readFileSync(path, 'utf8');
      json = JSON.parse(text) as object;
    } catch (error) {
      throw new ModelPackageError(`Tokenizer ${path} cannot be read: ${(error as Error).message}`);
    }
    // No clean-up of "tokenization spaces" (" ," -> ","): byte-level BPE decodes exactly, and the clean-up
    // rewrites text already streamed when the next token arrives, which would drop characters from deltas.
    const tokenizer = new Tokenizer(json, { clean_up_tokenization_spaces: false });
    let native: NativeTokenizer;
    try {
      native = NativeTokenizer.fromString(text);
    } catch (error) {
      throw new ModelPackageError(`Tokenizer ${path} cannot be loaded: ${(error as Error).message}`);
    }
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
    return new TextTokenizer(tokenizer, native, manifest, json);
  }

  /** Token ids of `text`, without BOS (synchronous: for short texts only, such as the worker's warm-up). */
  encode(text: string): number[] {
    return this.tokenizer.encode(text, { add_special_tokens: false }).ids;
  }

  /** The ids the model sees: BOS (when the package asks for it) followed by the text's tokens. */
  encodePrompt(text: string): number[] {
    return this.withBos(this.encode(text));
  }

  /** encodePrompt off the event loop (libuv's thread pool): what the server uses for prompts. */
  async tokenizePrompt(text: string): Promise<number[]> {
    const encoding = await this.native.encode(text, null, { addSpecialTokens: false });
    return this.withBos(encoding.getIds());
  }

  /**
   * A lower bound on encodePrompt(text).length, in time linear in the text and without BPE: each special
   * token is one token, and every pre-token of n bytes needs at least ceil(n / maxTokenBytes) tokens.
   */
  minPromptTokens(text: string): number {
    let count = this.addBos ? 1 : 0;
    const segments = this.specials.reduce<string[]>((parts, special) => parts.flatMap((part) => {
      const pieces = part.split(special);
      count += pieces.length - 1;
      return pieces;
    }), [text]);
    for (const segment of segments) {
      for (const match of segment.matchAll(PRE_TOKEN)) count += Math.ceil(Buffer.byteLength(match[0]) / this.maxTokenBytes);
    }
    return count;
  }

  /** Tokens of the text in ids from encodePrompt / tokenizePrompt (BOS not counted). */
  textTokenCount(ids: readonly number[]): number {
    return this.addBos ? ids.length - 1 : ids.length;
  }

  private withBos(ids: number[]): number[] {
    return this.addBos ? [this.bosId, ...ids] : ids;
  }

  /** Text of generated ids (special tokens dropped). */
  decode(ids: readonly number[]): string {
    return ids.length === 0 ? '' : this.tokenizer.decode(ids as number[], { skip_special_tokens: true });
  }

  /** The bytes token `id` adds to a decoded text (none for special tokens): decode(ids) is their UTF-8 decoding. */
  bytes(id: number): Uint8Array {
    return this.textBytes[id] ?? new Uint8Array(0);
  }

  /**
   * The text of one token, as reported in logprobs: special tokens keep their name, and a token that is not
   * whole UTF-8 characters is written the way OpenAI writes it, `bytes:\xNN...`, so that no two tokens share a text.
   */
  piece(id: number): string {
    return this.pieces[id] ?? this.tokenizer.decode([id], { skip_special_tokens: false });
  }
}
