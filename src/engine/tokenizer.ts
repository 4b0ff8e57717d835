// Text ↔ token ids for a Hugging Face checkpoint directory, on the native `tokenizers` binding.
// Loads `tokenizer.json`, or builds the byte-level BPE of Qwen2/GPT-2 style checkpoints from
// `vocab.json` + `merges.txt` + `tokenizer_config.json` (added_tokens_decoder) + `added_tokens.json`,
// exactly as transformers' Qwen2 converter does. Also gives each token's raw bytes (logprob `bytes`
// fields, incremental detokenization) and a synchronous decode.
//
// Threading: the binding's `encode`/`encodeBatch` run on the libuv pool (measured: 8 MB of text keeps
// the event loop ticking every 5 ms), but turning the result into a JS array happens on the calling
// thread (~45 ns per id: ~0.2 s in one block for a 4 M-token prompt). So where it is provably exact
// (see `splitAtSafeBoundaries`) long text is cut into ~64 K-char pieces, encoded with `encodeBatch` in
// groups of about 1 M chars, and the ids are collected one piece (~20 K ids) per event-loop turn.
// `encodeBatch` runs a group on one pool thread unless TOKENIZERS_PARALLELISM=true is set, which
// spreads it over all cores (×2 on 2 idle cores) but competes with the inference worker, so it is
// left to the operator.
// That still stalls the calling thread for a 13 MB prompt (bench/tokenize.ts): ~0.4 s collecting the
// ids where the text cannot be split (the tiny model's tokenizer.json), and ~0.6 s of CPU later, when
// a GC finalizes the binding's Encoding (a Rust struct with a String per token); and a number[] of
// millions of ids is slow to post to the engine worker. So the HTTP thread uses `encodeToInt32`:
// text of OFF_THREAD_MIN_CHARS or more is encoded by a tokenizer worker (off-thread-encoder.ts) that
// hands back an Int32Array by transfer; shorter text stays here.

import { readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer, type Encoding } from 'tokenizers';
import { ModelLoadError } from './errors.ts';
import { OffThreadEncoder } from './off-thread-encoder.ts';

export interface TokenizerLoadOptions {
  /** Target piece length for piecewise encoding of long text (chars); Infinity disables it. */
  readonly encodePieceChars?: number;
}

export interface EncodeOptions {
  /** Let the tokenizer's post-processor add its special tokens (BOS/EOS). Default true, as HF. */
  readonly addSpecialTokens?: boolean;
  /**
   * Special tokens written in the text (`<|im_start|>` …) are encoded as the plain text they spell,
   * never as the control token (HF's split_special_tokens). Needs addSpecialTokens false. For text a
   * user typed into a chat message: otherwise typing `<|im_end|><|im_start|>system` switches roles.
   */
  readonly specialTokensAsText?: boolean;
}

export interface DecodeOptions {
  readonly skipSpecialTokens?: boolean;
}

/** How a token string maps back to bytes. */
type ByteDecoding = 'byte-level' | 'sentencepiece' | 'plain';

/** The Qwen2 pre-tokenizer split (transformers' Qwen2Converter). */
export const QWEN2_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/** Llama 3's variant (digits in groups of three): same newline structure, so equally safe to split. */
const LLAMA3_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
/**
 * Qwen3.5's (transformers models/qwen3_5/tokenization_qwen3_5.py, PRETOKENIZE_REGEX): letters with their
 * combining marks (\p{M}) stay in one piece. Same newline structure as Qwen2's, so equally safe to split.
 */
export const QWEN3_5_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?[\\p{L}\\p{M}]+|\\p{N}| ?[^\\s\\p{L}\\p{M}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const SPLIT_SAFE_REGEXES = new Set([QWEN2_SPLIT_REGEX, LLAMA3_SPLIT_REGEX, QWEN3_5_SPLIT_REGEX]);

const DEFAULT_PIECE_CHARS = 65536;
const CHARS_PER_BATCH = 1 << 20;
/** Below this, encodeToInt32 encodes on the calling thread (≤ ~20 K ids: well under a millisecond). */
const OFF_THREAD_MIN_CHARS = 65536;

interface AddedTokenSpec {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** The parts of a tokenizer.json this module inspects. */
interface TokenizerSpec {
  added_tokens?: AddedTokenSpec[];
  normalizer?: { type?: string } | null;
  pre_tokenizer?: unknown;
  decoder?: unknown;
}

export class TextTokenizer {
  /** Number of ids the tokenizer knows, added tokens included (the model's V may be larger). */
  readonly vocabSize: number;
  /** tokenizer_config's eos_token; null when it has none. */
  readonly eosTokenId: number | null;
  /** eosTokenId plus generation_config.json's eos_token_id(s), deduplicated. */
  readonly eosTokenIds: readonly number[];
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  /** Added tokens marked special (skipped by decode with skipSpecialTokens). */
  readonly specialTokenIds: ReadonlySet<number>;
  /** Whether long text is encoded in pieces (only where that provably gives the same ids). */
  readonly piecewiseEncoding: boolean;

  private readonly addedTokenContent: ReadonlyMap<number, string>;
  /** Special added tokens written out in text, longest first (null: the tokenizer has none). */
  private readonly specialTextPattern: RegExp | null;
  /** Each special token's text encoded as ordinary text (by the tokenizer without its special added tokens). */
  private readonly plainIdsOfSpecial: ReadonlyMap<string, readonly number[]>;
  private readonly tokenStrings: (string | null | undefined)[] = [];
  /** tokenBytes of each id met so far (ids < vocabSize): decode and logprobs ask for the same few thousand ids again and again. */
  private readonly tokenByteCache: (Uint8Array | undefined)[];
  private readonly utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  private readonly utf8Encoder = new TextEncoder();
  private readonly offThread: OffThreadEncoder;

  private constructor(
    dir: string,
    loadOptions: TokenizerLoadOptions,
    private readonly tokenizer: Tokenizer,
    private readonly byteDecoding: ByteDecoding,
    private readonly pieceChars: number,
    init: {
      added: readonly AddedTokenSpec[];
      eosToken: string | null;
      bosToken: string | null;
      generationEosIds: readonly number[];
      piecewise: boolean;
      plainIdsOfSpecial: ReadonlyMap<string, readonly number[]>;
    },
  ) {
    this.vocabSize = tokenizer.getVocabSize(true);
    this.tokenByteCache = new Array<Uint8Array | undefined>(this.vocabSize);
    this.addedTokenContent = new Map(init.added.map((t) => [t.id, t.content]));
    this.specialTokenIds = new Set(init.added.filter((t) => t.special).map((t) => t.id));
    this.bosToken = init.bosToken;
    this.eosToken = init.eosToken;
    this.eosTokenId = init.eosToken === null ? null : tokenizer.tokenToId(init.eosToken);
    const eos = new Set<number>();
    if (this.eosTokenId !== null) eos.add(this.eosTokenId);
    for (const id of init.generationEosIds) eos.add(id);
    this.eosTokenIds = [...eos];
    this.piecewiseEncoding = init.piecewise;
    this.plainIdsOfSpecial = init.plainIdsOfSpecial;
    const specials = [...init.plainIdsOfSpecial.keys()].sort((a, b) => b.length - a.length);
    this.specialTextPattern = specials.length === 0 ? null : new RegExp(specials.map(escapeRegExp).join('|'), 'g');
    this.offThread = new OffThreadEncoder({ dir, options: loadOptions });
  }

  /** Loads the tokenizer of a checkpoint directory. Throws ModelLoadError when it cannot. */
  static async load(dir: string, options: TokenizerLoadOptions = {}): Promise<TextTokenizer> {
    const config = await readJsonIfExists(join(dir, 'tokenizer_config.json'));
    const generation = await readJsonIfExists(join(dir, 'generation_config.json'));

    let spec: TokenizerSpec;
    let tokenizer: Tokenizer;
    const tokenizerJsonPath = join(dir, 'tokenizer.json');
    if (await exists(tokenizerJsonPath)) {
      spec = (await readJsonIfExists(tokenizerJsonPath)) as TokenizerSpec;
      try {
        tokenizer = Tokenizer.fromFile(tokenizerJsonPath);
      } catch (err) {
        throw new ModelLoadError(`cannot load ${tokenizerJsonPath}: ${errorMessage(err)}`);
      }
    } else if (await exists(join(dir, 'vocab.json')) && (await exists(join(dir, 'merges.txt')))) {
      spec = await buildByteLevelBpeSpec(dir, config);
      try {
        tokenizer = Tokenizer.fromString(JSON.stringify(spec));
      } catch (err) {
        throw new ModelLoadError(`cannot build the BPE tokenizer of ${dir}: ${errorMessage(err)}`);
      }
    } else {
      throw new ModelLoadError(`${dir} has neither tokenizer.json nor vocab.json + merges.txt`);
    }

    const added = spec.added_tokens ?? [];
    const pieceChars = options.encodePieceChars ?? DEFAULT_PIECE_CHARS;
    // Piecewise encoding must not change the ids: the split regex must be one whose matches never
    // cross "newline → non-space", no added token may hold a newline or strip space to its left, and
    // the post-processor must add nothing (it would add per piece).
    const splitSafe =
      Number.isFinite(pieceChars) &&
      isSplitSafePreTokenizer(spec) &&
      added.every((t) => !t.lstrip && !/[\r\n]/.test(t.content)) &&
      (await tokenizer.encode('a', null, { addSpecialTokens: true })).getIds().length ===
        (await tokenizer.encode('a', null, { addSpecialTokens: false })).getIds().length;

    return new TextTokenizer(dir, options, tokenizer, byteDecodingOf(spec.decoder), pieceChars, {
      added,
      eosToken: tokenContent(config?.['eos_token']),
      bosToken: tokenContent(config?.['bos_token']),
      generationEosIds: idList(generation?.['eos_token_id']),
      piecewise: splitSafe,
      plainIdsOfSpecial: await plainEncodingsOfSpecials(spec, added, tokenizer),
    });
  }

  /** Whether `text` spells out a special token (which specialTokensAsText would encode as plain text). */
  containsSpecialTokenText(text: string): boolean {
    if (this.specialTextPattern === null) return false;
    this.specialTextPattern.lastIndex = 0;
    return this.specialTextPattern.test(text);
  }

  /**
   * Token ids of `text`. Special tokens written in the text (e.g. `<|im_start|>`) become one id each,
   * unless `specialTokensAsText`.
   */
  async encode(text: string, options: EncodeOptions = {}): Promise<number[]> {
    const addSpecialTokens = options.addSpecialTokens ?? true;
    if (options.specialTokensAsText === true) {
      if (addSpecialTokens) throw new Error('specialTokensAsText needs addSpecialTokens: false');
      if (this.containsSpecialTokenText(text)) return this.encodeSpecialsAsText(text);
    }
    if (!this.piecewiseEncoding || text.length <= this.pieceChars * 1.5) {
      return (await this.tokenizer.encode(text, null, { addSpecialTokens })).getIds();
    }
    const ids: number[] = [];
    for await (const encoding of this.pieceEncodings(text)) {
      for (const id of encoding.getIds()) ids.push(id);
      await yieldToEventLoop(); // one piece's ids (~20 K) per turn of the event loop
    }
    return ids;
  }

  /**
   * The ids of `encode`, as an Int32Array, without stalling this thread: long text is encoded by the
   * tokenizer worker (started on first use) and its ids arrive by transfer. For the HTTP thread.
   */
  async encodeToInt32(text: string, options: EncodeOptions = {}): Promise<Int32Array<ArrayBuffer>> {
    if (text.length < OFF_THREAD_MIN_CHARS) return Int32Array.from(await this.encode(text, options));
    return this.offThread.encode(text, options);
  }

  /** The ids of `encode`, as an Int32Array, collected on this thread in one go (the tokenizer worker's path). */
  async encodeInThreadToInt32(text: string, options: EncodeOptions = {}): Promise<Int32Array<ArrayBuffer>> {
    const addSpecialTokens = options.addSpecialTokens ?? true;
    if (options.specialTokensAsText === true) return Int32Array.from(await this.encode(text, options));
    if (!this.piecewiseEncoding || text.length <= this.pieceChars * 1.5) {
      return Int32Array.from((await this.tokenizer.encode(text, null, { addSpecialTokens })).getIds());
    }
    const parts: number[][] = [];
    for await (const encoding of this.pieceEncodings(text)) parts.push(encoding.getIds());
    return concatIds(parts);
  }

  /**
   * `text` cut at every special token it spells: the pieces between are encoded as usual (they spell
   * none), each special token as its plain-text ids. Only the token boundaries next to a cut can differ
   * from what one encode of the text would give (had the specials been ordinary text).
   */
  private async encodeSpecialsAsText(text: string): Promise<number[]> {
    const pattern = this.specialTextPattern as RegExp;
    // Alternating: text between specials (maybe ''), a special, text, …, text.
    const between: string[] = [];
    const specials: string[] = [];
    let at = 0;
    pattern.lastIndex = 0;
    for (let m = pattern.exec(text); m !== null; m = pattern.exec(text)) {
      between.push(text.slice(at, m.index));
      specials.push(m[0]);
      at = m.index + m[0].length;
    }
    between.push(text.slice(at));
    // One batch call per ~1 M chars rather than one encode per piece (a text may spell thousands of specials).
    const ids: number[] = [];
    for (let start = 0; start < between.length; ) {
      let end = start;
      let chars = 0;
      while (end < between.length && (end === start || chars < CHARS_PER_BATCH)) chars += (between[end++] as string).length;
      const encodings = await this.tokenizer.encodeBatch(between.slice(start, end), { addSpecialTokens: false });
      encodings.forEach((encoding, i) => {
        for (const id of encoding.getIds()) ids.push(id);
        const special = specials[start + i];
        if (special !== undefined) for (const id of this.plainIdsOfSpecial.get(special) ?? []) ids.push(id);
      });
      start = end;
    }
    return ids;
  }

  /** Stops the tokenizer worker, if one was started. */
  async close(): Promise<void> {
    await this.offThread.close();
  }

  /** Encodings of the safe pieces of `text` (no special tokens added), in order, ~1 M chars per batch. */
  private async *pieceEncodings(text: string): AsyncGenerator<Encoding> {
    const pieces = splitAtSafeBoundaries(text, this.pieceChars);
    for (let start = 0; start < pieces.length; ) {
      let end = start;
      let chars = 0;
      while (end < pieces.length && (end === start || chars < CHARS_PER_BATCH)) chars += (pieces[end++] as string).length;
      yield* await this.tokenizer.encodeBatch(pieces.slice(start, end), { addSpecialTokens: false });
      start = end;
    }
  }

  /** Text of `ids`; ids the tokenizer does not know are skipped (as HF). */
  decode(ids: ArrayLike<number>, options: DecodeOptions = {}): string {
    const skip = options.skipSpecialTokens ?? false;
    if (this.byteDecoding === 'byte-level') {
      // Two passes over the (cached) token bytes: the length, then one buffer; no array per token.
      let length = 0;
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i] as number;
        if (!(skip && this.specialTokenIds.has(id))) length += this.tokenBytes(id).length;
      }
      const bytes = new Uint8Array(length);
      let offset = 0;
      for (let i = 0; i < ids.length; i++) {
        const id = ids[i] as number;
        if (skip && this.specialTokenIds.has(id)) continue;
        const b = this.tokenBytes(id);
        bytes.set(b, offset);
        offset += b.length;
      }
      return this.utf8.decode(bytes);
    }
    const tokens: string[] = [];
    for (const id of Array.from(ids)) {
      if (skip && this.specialTokenIds.has(id)) continue;
      const token = this.idToToken(id);
      if (token !== null) tokens.push(token);
    }
    const decoder = this.tokenizer.getDecoder();
    return decoder === null ? tokens.join(' ') : decoder.decode(tokens);
  }

  idToToken(id: number): string | null {
    if (!Number.isInteger(id) || id < 0) return null;
    let token = this.tokenStrings[id];
    if (token === undefined) {
      token = this.tokenizer.idToToken(id);
      this.tokenStrings[id] = token;
    }
    return token;
  }

  tokenToId(token: string): number | null {
    return this.tokenizer.tokenToId(token);
  }

  isSpecial(id: number): boolean {
    return this.specialTokenIds.has(id);
  }

  /**
   * The bytes this token stands for in the text. Byte-level BPE: each char of the token maps back to
   * one byte (GPT-2's bytes_to_unicode), so a token may hold part of a UTF-8 character. Added tokens:
   * their content. SentencePiece: `<0xAB>` byte-fallback tokens are that byte, `▁` is a space.
   * Unknown ids: no bytes. The array is shared (cached per id): read it, never write to it.
   */
  tokenBytes(id: number): Uint8Array {
    const cached = this.tokenByteCache[id];
    if (cached !== undefined) return cached;
    const bytes = this.computeTokenBytes(id);
    if (Number.isInteger(id) && id >= 0 && id < this.vocabSize) this.tokenByteCache[id] = bytes;
    return bytes;
  }

  private computeTokenBytes(id: number): Uint8Array {
    const added = this.addedTokenContent.get(id);
    if (added !== undefined) return this.utf8Encoder.encode(added);
    const token = this.idToToken(id);
    if (token === null) return new Uint8Array(0);
    switch (this.byteDecoding) {
      case 'byte-level':
        return byteLevelTokenBytes(token) ?? this.utf8Encoder.encode(token);
      case 'sentencepiece': {
        const byte = /^<0x([0-9A-Fa-f]{2})>$/.exec(token);
        if (byte !== null) return Uint8Array.of(parseInt(byte[1] as string, 16));
        return this.utf8Encoder.encode(token.replaceAll('\u2581', ' '));
      }
      case 'plain':
        return this.utf8Encoder.encode(token);
    }
  }
}

/**
 * Cuts `text` into pieces of about `targetChars`, only right after a line break (\r or \n) that is
 * followed by a letter, number, punctuation or symbol. For the Qwen2/Llama 3 split regex no match
 * contains such a pair (a newline only ends a match: `\s*[\r\n]+`, `…[\r\n]*`; the lookahead
 * `\s+(?!\S)` is never reached for a run that ends in a newline, as `\s*[\r\n]+` comes first), and NFC
 * never composes across a line break, so the pieces tokenize to the same ids as the whole.
 */
export function splitAtSafeBoundaries(text: string, targetChars: number): string[] {
  const pieces: string[] = [];
  const boundary = /[\r\n](?=[\p{L}\p{N}\p{P}\p{S}])/gu;
  let start = 0;
  while (text.length - start > targetChars * 1.5) {
    boundary.lastIndex = start + targetChars;
    const match = boundary.exec(text);
    if (match === null) break;
    const cut = match.index + 1;
    pieces.push(text.slice(start, cut));
    start = cut;
  }
  pieces.push(text.slice(start));
  return pieces;
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100 onwards.
const BYTE_OF_CHAR: ReadonlyMap<number, number> = (() => {
  const map = new Map<number, number>();
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    map.set(printable ? b : next++, b);
  }
  return map;
})();

/** Byte-level token → bytes; null when a char is outside the byte alphabet (then HF keeps its UTF-8). */
function byteLevelTokenBytes(token: string): Uint8Array | null {
  const out = new Uint8Array(token.length);
  let n = 0;
  for (const ch of token) {
    const byte = BYTE_OF_CHAR.get(ch.codePointAt(0) as number);
    if (byte === undefined) return null;
    out[n++] = byte;
  }
  return out.subarray(0, n);
}

/**
 * transformers' Qwen2Converter, written as tokenizer.json (with Qwen3.5's split regex when
 * tokenizer_config.json names Qwen3_5Tokenizer, whose constructor builds that pre-tokenizer).
 */
async function buildByteLevelBpeSpec(dir: string, config: Record<string, unknown> | null): Promise<TokenizerSpec> {
  const vocab = (await readJsonIfExists(join(dir, 'vocab.json'))) as Record<string, number> | null;
  if (vocab === null) throw new ModelLoadError(`cannot read ${join(dir, 'vocab.json')}`);
  const mergesText = await readFile(join(dir, 'merges.txt'), 'utf8');
  const merges: [string, string][] = [];
  for (const line of mergesText.split(/\r?\n/)) {
    if (line === '' || line.startsWith('#version')) continue;
    const parts = line.split(' ');
    if (parts.length !== 2) throw new ModelLoadError(`merges.txt: bad line ${JSON.stringify(line)}`);
    merges.push([parts[0] as string, parts[1] as string]);
  }

  // Added tokens: tokenizer_config's added_tokens_decoder (with flags), then added_tokens.json.
  const added = new Map<number, AddedTokenSpec>();
  const decoderEntries = config?.['added_tokens_decoder'];
  if (isRecord(decoderEntries)) {
    for (const [idText, entry] of Object.entries(decoderEntries)) {
      if (!isRecord(entry) || typeof entry['content'] !== 'string') continue;
      const id = Number(idText);
      added.set(id, {
        id,
        content: entry['content'],
        single_word: entry['single_word'] === true,
        lstrip: entry['lstrip'] === true,
        rstrip: entry['rstrip'] === true,
        normalized: entry['normalized'] === true,
        special: entry['special'] === true,
      });
    }
  }
  const specialNames = new Set<string>();
  for (const key of ['bos_token', 'eos_token', 'unk_token', 'pad_token']) {
    const content = tokenContent(config?.[key]);
    if (content !== null) specialNames.add(content);
  }
  const extra = config?.['additional_special_tokens'];
  if (Array.isArray(extra)) for (const t of extra) if (typeof t === 'string') specialNames.add(t);
  const addedJson = await readJsonIfExists(join(dir, 'added_tokens.json'));
  if (addedJson !== null) {
    for (const [content, id] of Object.entries(addedJson)) {
      if (typeof id !== 'number' || added.has(id)) continue;
      added.set(id, {
        id,
        content,
        single_word: false,
        lstrip: false,
        rstrip: false,
        normalized: false,
        special: specialNames.has(content),
      });
    }
  }

  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [...added.values()].sort((a, b) => a.id - b.id),
    normalizer: { type: 'NFC' },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: config?.['tokenizer_class'] === 'Qwen3_5Tokenizer' ? QWEN3_5_SPLIT_REGEX : QWEN2_SPLIT_REGEX }, behavior: 'Isolated', invert: false },
        byteLevel,
      ],
    },
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      vocab,
      merges,
    },
  } as TokenizerSpec;
}

/**
 * Each special added token's text as the tokenizer encodes it when the token is not special: a
 * second tokenizer built from the same spec without its special added tokens encodes each once, at
 * load. Where that cannot be built, each character is encoded alone (no special token is one character).
 */
async function plainEncodingsOfSpecials(spec: TokenizerSpec, added: readonly AddedTokenSpec[], tokenizer: Tokenizer): Promise<Map<string, number[]>> {
  const specials = added.filter((t) => t.special).map((t) => t.content);
  const out = new Map<string, number[]>();
  if (specials.length === 0) return out;
  let plain: Tokenizer | null = null;
  try {
    plain = Tokenizer.fromString(JSON.stringify({ ...spec, added_tokens: added.filter((t) => !t.special) }));
  } catch {
    plain = null;
  }
  for (const s of specials) {
    if (plain !== null) {
      out.set(s, (await plain.encode(s, null, { addSpecialTokens: false })).getIds());
      continue;
    }
    const ids: number[] = [];
    for (const ch of s) ids.push(...(await tokenizer.encode(ch, null, { addSpecialTokens: false })).getIds());
    out.set(s, ids);
  }
  return out;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function isSplitSafePreTokenizer(spec: TokenizerSpec): boolean {
  const normalizer = spec.normalizer?.type;
  if (normalizer !== undefined && normalizer !== 'NFC') return false;
  const pre = spec.pre_tokenizer;
  if (!isRecord(pre) || pre['type'] !== 'Sequence' || !Array.isArray(pre['pretokenizers'])) return false;
  const [split, byteLevel, ...rest] = pre['pretokenizers'] as unknown[];
  if (rest.length > 0 || !isRecord(split) || !isRecord(byteLevel)) return false;
  const pattern = split['pattern'];
  return (
    split['type'] === 'Split' &&
    split['behavior'] === 'Isolated' &&
    split['invert'] !== true &&
    isRecord(pattern) &&
    typeof pattern['Regex'] === 'string' &&
    SPLIT_SAFE_REGEXES.has(pattern['Regex']) &&
    byteLevel['type'] === 'ByteLevel' &&
    byteLevel['add_prefix_space'] !== true &&
    byteLevel['use_regex'] === false
  );
}

function byteDecodingOf(decoder: unknown): ByteDecoding {
  if (!isRecord(decoder)) return 'plain';
  if (decoder['type'] === 'ByteLevel') return 'byte-level';
  if (decoder['type'] === 'Metaspace') return 'sentencepiece';
  if (decoder['type'] === 'Sequence' && Array.isArray(decoder['decoders'])) {
    const types = (decoder['decoders'] as unknown[]).map((d) => (isRecord(d) ? d['type'] : undefined));
    if (types.includes('ByteLevel')) return 'byte-level';
    if (types.includes('ByteFallback') || types.includes('Metaspace')) return 'sentencepiece';
  }
  return 'plain';
}

/** A special token in tokenizer_config: a string, or an AddedToken object with `content`. */
function tokenContent(value: unknown): string | null {
  if (typeof value === 'string') return value;
  if (isRecord(value) && typeof value['content'] === 'string') return value['content'];
  return null;
}

function idList(value: unknown): number[] {
  if (typeof value === 'number') return [value];
  if (Array.isArray(value)) return value.filter((v): v is number => typeof v === 'number');
  return [];
}

/** `parts` (lists of ids) laid end to end in one new Int32Array. */
function concatIds(parts: readonly ArrayLike<number>[]): Int32Array<ArrayBuffer> {
  let length = 0;
  for (const part of parts) length += part.length;
  const out = new Int32Array(length);
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  return out;
}

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function readJsonIfExists(path: string): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return null;
  }
  try {
    const value: unknown = JSON.parse(text);
    if (!isRecord(value)) throw new Error('not a JSON object');
    return value;
  } catch (err) {
    throw new ModelLoadError(`${path}: ${errorMessage(err)}`);
  }
}

function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
