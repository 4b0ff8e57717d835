// Which recognised models the engine cannot serve yet, and why: checked by the inference worker before
// it builds anything, and by `spikeserve serve` right after reading config.json (before the tokenizer
// and the engine start), so the one line comes first.
import type { ModelConfig } from './config.ts';

/** Why the engine cannot serve a model of this config (one line), or null when it can. */
export function servingRefusal(config: ModelConfig): string | null {
  if (config.modelType === 'sse_swa_moba') {
    // The graphs run these checkpoints (test/spikingbrain2-numerics.test.ts); the paged cache and the
    // step runner do not yet serve a model with both window and growing attention layers.
    return (
      'config.json: model_type "sse_swa_moba" (SpikingBrain 2.0) is recognised but not served yet: the engine does not yet cache its ' +
      'window and MoBA/full layers together (see docs/models/spikingbrain2.md; `spikeserve inspect` describes it)'
    );
  }
  return null;
}
