// The chat template of the served checkpoint and the special-token strings it refers to.
// No template is not an error: chat requests then use a ChatML fallback (routes/chat-completions).
import type { TextTokenizer } from '../engine/tokenizer.ts';
import { loadChatTemplate } from '../routes/chat-template.ts';
import type { ChatAssets } from './ports.ts';

export async function loadChatAssets(modelDir: string, tokenizer: Pick<TextTokenizer, 'bosToken' | 'eosToken'>): Promise<ChatAssets> {
  return { template: await loadChatTemplate(modelDir), bosToken: tokenizer.bosToken ?? '', eosToken: tokenizer.eosToken ?? '' };
}
