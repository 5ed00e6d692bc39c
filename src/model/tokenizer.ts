/**
 * The package's Hugging Face tokenizer with the manifest's special-token rules: BOS is prepended when `add_bos`, and
 * generation ends at any of `eos_token_ids` (or the one `eos_token_id`).
 *
 * Two kinds of vocabulary (`tokenizer.kind`), which differ in how a token's text stands for bytes:
 * - `byte_level` (GPT-2, Llama 3, Qwen2): every byte is written as one character of GPT-2's byte alphabet;
 * - `sentencepiece` (Llama 2, Mistral): `▁` is a space, `<0xNN>` is the byte NN (byte fallback), any other text is
 *   its UTF-8.
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
import { eosTokenIds, type Manifest } from './manifest.js';

export type TokenizerKind = 'byte_level' | 'sentencepiece';

/** GPT-2's byte-level alphabet: the character each byte is written as in the vocabulary, inverted. */
function byteLevelDecoder(): Map<string, number> {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  const map = new Map<string, number>();
  let extra = 0;
  for (let b = 0; b < 256; b++) map.set(String.fromCodePoint(printable(b) ? b : 256 + extra++), b);
  return map;
}

/** A byte-level token's bytes: each character of its text is one byte. */
function byteLevelBytes(): (token: string) => Uint8Array {
  const bytesOf = byteLevelDecoder();
  return (token) => Uint8Array.from(token, (ch) => bytesOf.get(ch) ?? 0);
}

/** A SentencePiece token's bytes: `<0xNN>` is the byte NN, `▁` a space, any other text its UTF-8. */
function sentencePieceBytes(token: string): Uint8Array {
  const byte = BYTE_TOKEN.exec(token);
  if (byte !== null) return Uint8Array.of(Number.parseInt(byte[1], 16));
  return new TextEncoder().encode(token.replaceAll(METASPACE, ' '));
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

/** SentencePiece's word boundary: a space in the text. */
const METASPACE = '\u2581';
/** SentencePiece's byte-fallback tokens. */
const BYTE_TOKEN = /^<0x([0-9A-Fa-f]{2})>$/;

/** What the constructor reads from tokenizer.json besides the vocabulary. */
interface TokenizerJson {
  added_tokens?: Array<{ content: string; special?: boolean }>;
  normalizer?: unknown;
  pre_tokenizer?: { type?: string; use_regex?: boolean } | null;
}

export class TextTokenizer {
  readonly kind: TokenizerKind;
  /** The first of eosIds (the manifest's eos_token_id). */
  readonly eosId: number;
  /** Every id that ends generation. */
  readonly eosIds: readonly number[];
  private readonly eosSet: ReadonlySet<number>;
  readonly bosId: number | null;
  readonly addBos: boolean;
  readonly vocabSize: number;
  /** Bytes of the longest token: a text of n bytes has at least ceil(n / maxTokenBytes) tokens. */
  readonly maxTokenBytes: number;
  private readonly pieces: string[] = [];
  /** The bytes of each token in a decoded text: none for special tokens (decoding skips them). */
  private readonly textBytes: Uint8Array[] = [];
  /** Added tokens (special or not): the input is split at them before anything else, each one a token. */
  private readonly specials: string[];
  /**
   * True for GPT-2's pre-tokenizer alone (ByteLevel with its regex, no normalizer): minPromptTokens may then count its
   * pre-tokens. Other pre-tokenizers split differently (Llama 3's joins a punctuation character to the word after
   * it), so for them the bound counts bytes alone.
   */
  private readonly gpt2Split: boolean;

  private constructor(
    private readonly tokenizer: Tokenizer,
    private readonly native: NativeTokenizer,
    manifest: Manifest,
    json: TokenizerJson,
  ) {
    this.kind = manifest.tokenizer.kind ?? 'byte_level';
    this.eosIds = eosTokenIds(manifest);
    this.eosId = manifest.tokenizer.eos_token_id;
    this.eosSet = new Set(this.eosIds);
    this.bosId = manifest.tokenizer.bos_token_id;
    this.addBos = manifest.tokenizer.add_bos;
    this.vocabSize = manifest.dims.vocab_size;
    const added = json.added_tokens ?? [];
    this.specials = added.map((t) => t.content);
    const special = new Set(added.filter((t) => t.special !== false).map((t) => t.content));
    const plain = new Set(added.filter((t) => t.special === false).map((t) => t.content));
    const pre = json.pre_tokenizer;
    this.gpt2Split = this.kind === 'byte_level' && (json.normalizer ?? null) === null && pre?.type === 'ByteLevel' && pre.use_regex !== false;
    const bytesOf = this.kind === 'sentencepiece' ? sentencePieceBytes : byteLevelBytes();
    const utf8 = new TextEncoder();
    let longest = 1;
    for (const [token, id] of tokenizer.get_vocab(true) as Map<string, number>) {
      // added tokens are written as their text, not in the vocabulary's byte alphabet
      const isSpecial = special.has(token);
      const bytes = isSpecial || plain.has(token) ? utf8.encode(token) : bytesOf(token);
      longest = Math.max(longest, bytes.length);
      let piece: string;
      try {
        piece = isSpecial ? token : strictUtf8.decode(bytes);
      } catch {
        piece = bytesPiece(bytes);
      }
      this.pieces[id] = piece;
      this.textBytes[id] = isSpecial ? new Uint8Array(0) : bytes;
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
    const { bos_token: bosToken, bos_token_id: bosId } = manifest.tokenizer;
    if (bosToken !== undefined && bosId !== null && tokenizer.token_to_id(bosToken) !== bosId) {
      throw new ModelPackageError(`Tokenizer ${path} maps ${bosToken} to ${tokenizer.token_to_id(bosToken)}, the manifest says bos_token_id ${bosId}`);
    }
    const size = tokenizer.get_vocab(true).size;
    if (size > manifest.dims.vocab_size) {
      throw new ModelPackageError(`Tokenizer ${path} has ${size} tokens, more than dims.vocab_size ${manifest.dims.vocab_size}`);
    }
    return new TextTokenizer(tokenizer, native, manifest, json as TokenizerJson);
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
    return this.withBos(await this.tokenize(text));
  }

  /** encode off the event loop: the text's tokens, no BOS added (a chat template writes its own). */
  async tokenize(text: string): Promise<number[]> {
    const encoding = await this.native.encode(text, null, { addSpecialTokens: false });
    return encoding.getIds();
  }

  /**
   * A lower bound on encodePrompt(text).length, in time linear in the text and without BPE: each added token found in
   * the text is one token, and the text between them carries its bytes (as normalised, `▁` counting as the space it
   * stands for) in tokens of at most maxTokenBytes bytes each. With GPT-2's pre-tokenizer the bound is taken per
   * pre-token (every pre-token becomes at least one token), which is tighter. (A SentencePiece vocabulary is assumed
   * to have byte fallback, as Llama's and Mistral's do: without it, one unknown-token id could stand for any text.)
   * `withBos: false` bounds a text fed without a BOS (a rendered chat, which writes its own).
   */
  minPromptTokens(text: string, withBos = this.addBos): number {
    let count = withBos ? 1 : 0;
    const segments = this.specials.reduce<string[]>((parts, special) => parts.flatMap((part) => {
      const pieces = part.split(special);
      count += pieces.length - 1;
      return pieces;
    }), [text]);
    for (const segment of segments) {
      if (segment === '') continue;
      if (this.gpt2Split) {
        for (const match of segment.matchAll(PRE_TOKEN)) count += Math.ceil(Buffer.byteLength(match[0]) / this.maxTokenBytes);
        continue;
      }
      count += Math.ceil(this.carriedBytes(segment) / this.maxTokenBytes);
    }
    return count;
  }

  /** The bytes the tokens of a text between added tokens stand for, at least: its normalised text's. */
  private carriedBytes(segment: string): number {
    // normalizers such as NFC can shorten a text (e + combining accent -> é), so the bound takes the normalised text
    const normalised = this.tokenizer.normalizer?.normalize(segment) ?? segment;
    let bytes = Buffer.byteLength(normalised);
    if (this.kind === 'sentencepiece') {
      // each ▁ (3 bytes in UTF-8) stands for one space
      for (let at = normalised.indexOf(METASPACE); at >= 0; at = normalised.indexOf(METASPACE, at + 1)) bytes -= 2;
    }
    return bytes;
  }

  /** Whether generating `id` ends the text (any of the package's end-of-text ids). */
  isEos(id: number): boolean {
    return this.eosSet.has(id);
  }

  /** Tokens of the text in ids from encodePrompt / tokenizePrompt (BOS not counted). */
  textTokenCount(ids: readonly number[]): number {
    return this.addBos ? ids.length - 1 : ids.length;
  }

  private withBos(ids: number[]): number[] {
    return this.addBos && this.bosId !== null ? [this.bosId, ...ids] : ids;
  }

  /**
   * Text of generated ids (special tokens dropped): what the server streams for them. For a byte-level vocabulary it
   * is the tokenizer's own decode. For SentencePiece it is the UTF-8 decoding of the tokens' bytes, which differs from
   * the tokenizer's decode only in keeping a leading space: Hugging Face's Metaspace decoder strips the space the
   * encoder put before a whole text, but generated ids continue a prompt, where that space is part of the text.
   */
  decode(ids: readonly number[]): string {
    if (ids.length === 0) return '';
    if (this.kind === 'sentencepiece') {
      const decoder = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
      return ids.map((id) => decoder.decode(this.bytes(id), { stream: true })).join('') + decoder.decode();
    }
    return this.tokenizer.decode(ids as number[], { skip_special_tokens: true });
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
