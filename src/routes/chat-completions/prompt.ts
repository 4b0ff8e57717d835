// Chat messages → prompt token ids: render the checkpoint's chat template (../chat-template.ts;
// a ChatML fallback when the checkpoint has none), then tokenize asynchronously. Also finds the
// template's end-of-turn token, which ends a chat reply even when generation_config names only
// <|endoftext|> (the SpikingBrain chat template closes turns with <|im_end|>).
import type { FastifyInstance } from 'fastify';
import { renderChat, type ChatTemplateMessage } from '../chat-template.ts';

/** Used when the checkpoint has no chat template. */
const CHATML_TEMPLATE =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const END_OF_TURN_CANDIDATES = ['<|im_end|>', '<|eot_id|>', '<|end|>', '<end_of_turn>'];
const START_OF_TURN_CANDIDATES = ['<|im_start|>', '<|start_header_id|>', '<start_of_turn>'];

export interface ChatPromptOptions {
  readonly messages: readonly ChatTemplateMessage[];
  readonly tools?: readonly unknown[] | null | undefined;
  readonly addGenerationPrompt: boolean;
  readonly chatTemplateKwargs?: Readonly<Record<string, unknown>> | null | undefined;
}

/** Throws ChatTemplateError (a 400 naming `messages`) when the template refuses the messages. */
export function renderChatPrompt(app: FastifyInstance, opts: ChatPromptOptions): string {
  const assets = app.chatAssets;
  return renderChat(assets.template ?? CHATML_TEMPLATE, {
    messages: opts.messages,
    ...(opts.tools !== undefined && opts.tools !== null ? { tools: opts.tools } : {}),
    addGenerationPrompt: opts.addGenerationPrompt,
    ...(opts.chatTemplateKwargs !== undefined && opts.chatTemplateKwargs !== null ? { chatTemplateKwargs: opts.chatTemplateKwargs } : {}),
    bosToken: assets.bosToken,
    eosToken: assets.eosToken,
  });
}

/** Renders and tokenizes (the template already wrote any BOS, so none is added). */
export async function chatPromptTokens(app: FastifyInstance, opts: ChatPromptOptions): Promise<Int32Array> {
  return (await chatPrompt(app, opts)).ids;
}

/** The rendered prompt and its tokens. */
export async function chatPrompt(app: FastifyInstance, opts: ChatPromptOptions): Promise<{ text: string; ids: Int32Array }> {
  const text = renderChatPrompt(app, opts);
  return { text, ids: await app.tokenizer.encodeToInt32(text, { addSpecialTokens: false }) };
}

/**
 * Tokens before the last message of a rendered chat: the part later chats with the same history (a
 * long document in the system message, earlier turns) are likely to start with, which the engine then
 * also snapshots. Found as the start-of-turn token that opens the last message (the one before the
 * generation prompt's); undefined when the template has no such token or there is no earlier turn.
 */
export function sharedPrefixTokens(app: FastifyInstance, ids: Int32Array, addGenerationPrompt: boolean): number | undefined {
  const template = app.chatAssets.template ?? CHATML_TEMPLATE;
  const tok = START_OF_TURN_CANDIDATES.find((t) => template.includes(t));
  const id = tok === undefined ? null : app.tokenizer.tokenToId(tok);
  if (id === null) return undefined;
  let skip = addGenerationPrompt ? 1 : 0; // the generation prompt opens one more turn
  for (let i = ids.length - 1; i > 0; i--) {
    if (ids[i] !== id) continue;
    if (skip-- === 0) return i;
  }
  return undefined;
}

/** Token ids that end an assistant turn under this template (beyond the model's eos ids). */
export function endOfTurnTokenIds(app: FastifyInstance): number[] {
  const template = app.chatAssets.template ?? CHATML_TEMPLATE;
  const ids: number[] = [];
  for (const tok of END_OF_TURN_CANDIDATES) {
    if (!template.includes(tok)) continue;
    const id = app.tokenizer.tokenToId(tok);
    if (id !== null) ids.push(id);
  }
  return ids;
}
