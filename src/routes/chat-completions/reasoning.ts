// Reasoning in a chat reply, as Qwen3 / Qwen3.5 (and DeepSeek-R1-style) chat templates have models
// write it:
//
//   <think>
//   …the model's reasoning…
//   </think>
//
//   …the answer…
//
// The text between the tags becomes `reasoning_content` (vLLM's field; OpenAI clients read it as an
// extra field), the rest `content`. With thinking on, these templates end the prompt inside an open
// `<think>` block, so the reply starts in reasoning and carries only the closing tag; with it off
// (`chat_template_kwargs: {"enable_thinking": false}`) they close an empty block in the prompt and the
// reply is all content. Which one applies is read from the rendered prompt (reasoningMode), so nothing
// here depends on one template's variable names. Parsing is on only for templates that write `</think>`.
//
// ReasoningParser splits text as it streams; text that may still be the start of a tag is held back
// until it can be decided, so a streamed client never sees half a tag. A reply cut short (max_tokens)
// inside its reasoning has reasoning_content and no content.

export const THINK_OPEN = '<think>';
export const THINK_CLOSE = '</think>';

/** How the reply starts: inside an open <think> block (the prompt opened it) or not. */
export interface ReasoningMode {
  readonly startsInReasoning: boolean;
}

/**
 * The reasoning mode of a reply to `prompt`, rendered by `template`; null when the template does not
 * write reasoning blocks (then replies are not parsed).
 */
export function reasoningMode(template: string | null, prompt: string): ReasoningMode | null {
  if (template === null || !template.includes(THINK_CLOSE)) return null;
  return { startsInReasoning: prompt.lastIndexOf(THINK_OPEN) > prompt.lastIndexOf(THINK_CLOSE) };
}

export interface SplitText {
  readonly reasoning: string;
  readonly content: string;
}

/** Length of the longest suffix of `text` that is a proper prefix of `tag`. */
function partialTagSuffix(text: string, tag: string): number {
  for (let n = Math.min(tag.length - 1, text.length); n > 0; n--) {
    if (text.endsWith(tag.slice(0, n))) return n;
  }
  return 0;
}

export class ReasoningParser {
  /** 'start': nothing decided yet (a reply may open with <think>); then 'reasoning' or 'content'. */
  private state: 'start' | 'reasoning' | 'content';
  private pending = '';

  constructor(mode: ReasoningMode) {
    this.state = mode.startsInReasoning ? 'reasoning' : 'start';
  }

  /** Whitespace right after </think> (the templates put blank lines there) belongs to neither part. */
  private trimLeading = false;

  /** Feeds the next piece of reply text. */
  push(text: string): SplitText {
    this.pending += text;
    let reasoning = '';
    let content = '';
    for (;;) {
      if (this.state === 'content') {
        if (this.trimLeading) {
          this.pending = this.pending.replace(/^\s+/, '');
          if (this.pending !== '') this.trimLeading = false;
        }
        content += this.pending;
        this.pending = '';
        break;
      }
      if (this.state === 'start') {
        // Only leading whitespace may precede an opening tag; anything else means no reasoning block.
        const trimmed = this.pending.trimStart();
        if (trimmed.startsWith(THINK_OPEN)) {
          this.pending = trimmed.slice(THINK_OPEN.length);
          this.state = 'reasoning';
          continue;
        }
        if (THINK_OPEN.startsWith(trimmed)) break; // '' or a prefix of the tag: wait
        this.state = 'content';
        continue;
      }
      // Reasoning: up to the closing tag.
      const close = this.pending.indexOf(THINK_CLOSE);
      if (close < 0) {
        const keep = partialTagSuffix(this.pending, THINK_CLOSE);
        reasoning += this.pending.slice(0, this.pending.length - keep);
        this.pending = this.pending.slice(this.pending.length - keep);
        break;
      }
      reasoning += this.pending.slice(0, close);
      this.pending = this.pending.slice(close + THINK_CLOSE.length);
      this.state = 'content';
      this.trimLeading = true;
    }
    return { reasoning, content };
  }

  /** End of the reply: text still held back goes where it was heading. */
  finish(): SplitText {
    const rest = this.pending;
    this.pending = '';
    if (this.state === 'reasoning') return { reasoning: rest, content: '' };
    return { reasoning: '', content: this.trimLeading ? rest.replace(/^\s+/, '') : rest };
  }
}

/** Splits a whole reply: reasoning (null when there was none) and content. */
export function splitReasoning(text: string, mode: ReasoningMode): { reasoning: string | null; content: string } {
  const parser = new ReasoningParser(mode);
  const a = parser.push(text);
  const b = parser.finish();
  const reasoning = a.reasoning + b.reasoning;
  const sawReasoning = mode.startsInReasoning || text.trimStart().startsWith(THINK_OPEN);
  return { reasoning: sawReasoning ? reasoning.trim() : null, content: a.content + b.content };
}
