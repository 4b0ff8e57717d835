// Assistant messages a chat sends back that are recent replies of this server (./reply-ids.ts): their
// content is rendered as a placeholder and encoded as the ids the model generated, so the prompt's
// ids run on exactly as the previous request's (prompt + reply + the template's end of turn) and the
// engine resumes from that request's snapshot. The prompt's text is unchanged: the ids decode to the
// content.
//
// Two checks keep every other token of the prompt what one encode of the rendered text gives:
//
//   1. The template must write the content as it is. The chat is rendered again with placeholders; with
//      each placeholder replaced by its content, that text must equal the ordinary render (a template
//      that strips, trims or rewrites an assistant content fails this, and nothing is spliced).
//   2. Each boundary must be one the tokenizer splits at anyway, so encoding the template's text around
//      the content on its own gives the ids it has in one encode. Left of the content: the start of
//      the prompt, a line break or a special token, and the content starts with a letter, number,
//      punctuation or symbol (the Qwen2 / Llama 3 / GPT-2 split regexes never join a newline to what
//      follows it unless that is whitespace: see splitAtSafeBoundaries in src/engine/tokenizer.ts).
//      Right: the end of the prompt or a special token (`<|im_end|>`: added tokens are split off
//      before anything else), unless that token strips the space to its left. A content whose
//      boundaries fail this is encoded as text, as before; the others are still spliced. A tokenizer
//      that encodes a piece differently on its own (one that prefixes a space to every encode call) is
//      found by a few probes on first use, and never spliced.
import type { ChatTemplateMessage } from '../chat-template.ts';
import type { PromptContext } from '../common/prompt-context.ts';
import type { TokenizerPort } from '../../server/ports.ts';

/** The rendered prompt with reply placeholders, and the ids each stands for. */
export interface SplicedReplies {
  /** The render with placeholders `\uE000<nonce>:r<k>\uE001` where reply k's ids go. */
  readonly text: string;
  readonly ids: readonly Int32Array[];
}

/** The placeholder of reply k. */
export function replyPlaceholder(nonce: string, k: number): string {
  return `\uE000${nonce}:r${k}\uE001`;
}

/** A letter, number, punctuation or symbol: no split regex joins a preceding line break to it. */
const SAFE_FIRST_CHAR = /^[\p{L}\p{N}\p{P}\p{S}]/u;
/** A special token's text is `<…>` in every template this server knows (`<|im_end|>`, `</s>`, `<end_of_turn>`). */
const LEADING_TAG = /^<[^<>\s]{1,62}>/;
const TRAILING_TAG = /<[^<>\s]{1,62}>$/;

type SpliceTokenizer = Pick<TokenizerPort, 'encode' | 'tokenToId' | 'isSpecial'>;

function specialId(tokenizer: SpliceTokenizer, text: string | undefined): number | null {
  if (text === undefined) return null;
  const id = tokenizer.tokenToId(text);
  return id !== null && tokenizer.isSpecial(id) ? id : null;
}

function sameIds(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

/** Per tokenizer: whether pieces split after a line break encode as in one encode; per special token, whether it leaves the space before it alone. */
const probes = new WeakMap<object, { lineBreak: Promise<boolean>; specials: Map<string, Promise<boolean>> }>();

function probesOf(tokenizer: SpliceTokenizer): { lineBreak: Promise<boolean>; specials: Map<string, Promise<boolean>> } {
  let p = probes.get(tokenizer);
  if (p === undefined) {
    const samples: [string, string][] = [
      ['assistant\n', 'Hello there.'],
      ['x\n', '1, 2'],
      ['a \n', '"Quoted" text'],
      ['\n', 'Über'],
    ];
    const lineBreak = (async () => {
      for (const [left, right] of samples) {
        const [whole, l, r] = await Promise.all([left + right, left, right].map((t) => tokenizer.encode(t, { addSpecialTokens: false })));
        if (!sameIds(whole!, [...l!, ...r!])) return false;
      }
      return true;
    })();
    p = { lineBreak, specials: new Map() };
    probes.set(tokenizer, p);
  }
  return p;
}

/** Whether text ending in spaces, then `special`, encodes as the text's ids then the special's id. */
function specialKeepsLeftSpace(tokenizer: SpliceTokenizer, special: string, id: number): Promise<boolean> {
  const p = probesOf(tokenizer);
  let answer = p.specials.get(special);
  if (answer === undefined) {
    answer = (async () => {
      const left = 'end. \n ';
      const [whole, l] = await Promise.all([tokenizer.encode(left + special, { addSpecialTokens: false }), tokenizer.encode(left, { addSpecialTokens: false })]);
      return sameIds(whole, [...l, id]);
    })();
    p.specials.set(special, answer);
  }
  return answer;
}

async function leftBoundaryIsSafe(tokenizer: SpliceTokenizer, before: string, atStart: boolean, content: string): Promise<boolean> {
  if (!SAFE_FIRST_CHAR.test(content)) return false;
  if (before === '') return atStart;
  if (before.endsWith('\n')) return probesOf(tokenizer).lineBreak;
  return specialId(tokenizer, TRAILING_TAG.exec(before)?.[0]) !== null;
}

async function rightBoundaryIsSafe(tokenizer: SpliceTokenizer, after: string, atEnd: boolean): Promise<boolean> {
  if (after === '') return atEnd;
  const tag = LEADING_TAG.exec(after)?.[0];
  const id = specialId(tokenizer, tag);
  return id !== null && specialKeepsLeftSpace(tokenizer, tag as string, id);
}

/**
 * `messages` (as rendered into `rendered`, with `render`) with the assistant contents the context
 * remembers spliced in, or null when none is (none remembered, the template changes them, or no
 * boundary is safe). `placeholder` matches every placeholder the caller already put in `messages`
 * (those of untrusted contents) and those of replyPlaceholder(nonce, ·).
 */
export async function spliceReplies(
  ctx: PromptContext,
  messages: readonly ChatTemplateMessage[],
  rendered: string,
  render: (messages: readonly ChatTemplateMessage[]) => string,
  nonce: string,
  placeholder: RegExp,
): Promise<SplicedReplies | null> {
  const replies = ctx.replies;
  if (replies === undefined) return null;
  const candidates: number[] = [];
  messages.forEach((m, i) => {
    if (m['role'] === 'assistant' && typeof m['content'] === 'string' && m['content'] !== '') candidates.push(i);
  });
  if (candidates.length === 0) return null;
  const found = await replies.idsOf(candidates.map((i) => messages[i]!['content'] as string));
  const contents: string[] = [];
  const ids: Int32Array[] = [];
  const withPlaceholders = messages.slice();
  candidates.forEach((i, c) => {
    const hit = found[c];
    if (hit === null || hit === undefined) return;
    const m = messages[i]!;
    withPlaceholders[i] = { ...m, content: replyPlaceholder(nonce, ids.length) };
    contents.push(m['content'] as string);
    ids.push(hit);
  });
  if (ids.length === 0) return null;

  // 1. The template writes each content as it is.
  let text: string;
  try {
    text = render(withPlaceholders);
  } catch {
    return null;
  }
  const replyMark = new RegExp(`\uE000${nonce}:r(\\d+)\uE001`, 'g');
  if (text.replace(replyMark, (_, k: string) => contents[Number(k)] ?? '') !== rendered) return null;

  // 2. Every boundary of a spliced content is one the tokenizer splits at anyway.
  const tokenizer = ctx.tokenizer;
  const marks = [...text.matchAll(placeholder)];
  const unsafe = new Set<number>();
  for (let j = 0; j < marks.length; j++) {
    const mark = marks[j]!;
    if (mark[1] !== 'r') continue;
    const k = Number(mark[2]);
    const start = mark.index;
    const end = start + mark[0].length;
    const prevEnd = j > 0 ? marks[j - 1]!.index + marks[j - 1]![0].length : 0;
    const nextStart = j + 1 < marks.length ? marks[j + 1]!.index : text.length;
    const safe =
      (await leftBoundaryIsSafe(tokenizer, text.slice(prevEnd, start), j === 0, contents[k]!)) &&
      (await rightBoundaryIsSafe(tokenizer, text.slice(end, nextStart), j + 1 === marks.length));
    if (!safe) unsafe.add(k);
  }
  if (unsafe.size === ids.length) return null;
  if (unsafe.size > 0) text = text.replace(replyMark, (whole: string, k: string) => (unsafe.has(Number(k)) ? contents[Number(k)]! : whole));
  return { text, ids };
}
