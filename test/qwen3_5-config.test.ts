// Qwen3.5 config parsing (src/engine/model/qwen3_5-config.ts): both layouts give the same text model,
// the layer plan from layer_types or full_attention_interval, the official defaults, and one clear line
// for what is refused.
import { describe, expect, it } from 'vitest';
import { parseModelConfig } from '../src/engine/model/config.ts';
import { stateTensorSpecs } from '../src/engine/model/layer-plan.ts';
import { tinyRawConfig } from './helpers/checkpoint-writer.ts';

const text = tinyRawConfig({ modelType: 'qwen3_5', numLayers: 8 });

describe('Qwen3.5 config', () => {
  it('the multimodal wrapper\'s text_config gives the same model as Qwen3_5ForCausalLM', () => {
    const a = parseModelConfig(text);
    const b = parseModelConfig(tinyRawConfig({ modelType: 'qwen3_5', numLayers: 8, qwen3_5Layout: 'multimodal' }));
    expect(b).toEqual(a);
    expect(a.layerKinds).toEqual(['gdn', 'gdn', 'gdn', 'full', 'gdn', 'gdn', 'gdn', 'full']);
    expect(a).toMatchObject({ modelType: 'qwen3_5', slidingWindow: null, zeroCentredNorms: true, headDim: 16, hiddenSize: 48 });
    expect(a.attention).toEqual({ bias: false, outputGate: true, qkNorm: true, rotaryDim: 4 });
    expect(a.gdn).toEqual({ numKeyHeads: 2, numValueHeads: 4, keyHeadDim: 8, valueHeadDim: 8, convKernel: 4 });
  });

  it('layer_types decides over the interval; GDN layers keep a conv state [convDim, K−1] and S [Hv, dk, dv]', () => {
    const c = parseModelConfig({ ...text, num_hidden_layers: 3, layer_types: ['full_attention', 'linear_attention', 'linear_attention'] });
    expect(c.layerKinds).toEqual(['full', 'gdn', 'gdn']);
    expect(stateTensorSpecs(c).map((s) => [s.layer, s.inputName, s.dims])).toEqual([
      [1, 'conv_state.1', [2 * 2 * 8 + 4 * 8, 3]],
      [1, 'state.1', [4, 8, 8]],
      [2, 'conv_state.2', [64, 3]],
      [2, 'state.2', [4, 8, 8]],
    ]);
  });

  it('uses the official defaults for absent fields (head_dim 256, partial rotary 0.25, interval 4, GDN 16/32 heads of 128)', () => {
    const c = parseModelConfig({ model_type: 'qwen3_5_text', vocab_size: 10, hidden_size: 64, num_hidden_layers: 4, num_attention_heads: 2, num_key_value_heads: 1, intermediate_size: 8 });
    expect(c.headDim).toBe(256);
    expect(c.attention.rotaryDim).toBe(64);
    expect(c.layerKinds).toEqual(['gdn', 'gdn', 'gdn', 'full']);
    expect(c.gdn).toEqual({ numKeyHeads: 16, numValueHeads: 32, keyHeadDim: 128, valueHeadDim: 128, convKernel: 4 });
    expect(c.normEps).toBe(1e-6);
  });

  it.each([
    [{ layer_types: ['linear_attention'] }, /"layer_types" must list 8 layer types/],
    [{ layer_types: Array.from({ length: 8 }, () => 'sliding_attention') }, /"layer_types"\[0\] is "sliding_attention"/],
    [{ linear_num_value_heads: 3 }, /not a multiple of "linear_num_key_heads"/],
    [{ rope_parameters: { rope_type: 'yarn', factor: 4 } }, /rope type "yarn" is not supported/],
    [{ hidden_act: 'gelu' }, /"hidden_act" is "gelu"/],
    [{ num_experts: 8 }, /mixture-of-experts models \(num_experts=8\) are not supported yet/],
  ])('refuses %j with one line', (patch, message) => {
    expect(() => parseModelConfig({ ...text, ...patch })).toThrow(message);
  });

  it('refuses a wrapper without text_config', () => {
    expect(() => parseModelConfig({ model_type: 'qwen3_5', vision_config: {} })).toThrow(/needs an object "text_config"/);
  });
});
