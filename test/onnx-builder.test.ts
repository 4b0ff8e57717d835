// The ONNX writer: protobuf field layout (decoded with a schema typed from onnx/onnx.proto), EXTERNAL
// weights streamed at aligned offsets, a small graph run by a real onnxruntime session, and the
// on-disk build cache (reuse, no leftovers).
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import * as ort from 'onnxruntime-node';
import protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseModelConfig } from '../src/engine/model/config.ts';
import { randomCheckpoint } from '../src/engine/model/random-checkpoint.ts';
import { BUILDER_VERSION, DECODE_MODEL_FILE, ensureBuiltModel, ensureDecodeGraph, type BuildProgress } from '../src/engine/model/onnx/build-cache.ts';
import { EXTERNAL_ALIGN_BYTES, GraphBuilder, int } from '../src/engine/model/onnx/graph-builder.ts';
import { DataType, encodeModel } from '../src/engine/model/onnx/proto.ts';
import { tinyRawConfig } from './helpers/checkpoint-writer.ts';

// The messages and field numbers we write, as in onnx/onnx.proto (proto2 there; optional fields here).
const ONNX_SUBSET = `
syntax = "proto3";
message StringStringEntryProto { string key = 1; string value = 2; }
message OperatorSetIdProto { string domain = 1; int64 version = 2; }
message TensorProto {
  repeated int64 dims = 1; int32 data_type = 2; string name = 8; bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13; int32 data_location = 14;
}
message AttributeProto {
  string name = 1; float f = 2; int64 i = 3; bytes s = 4; TensorProto t = 5;
  repeated float floats = 7; repeated int64 ints = 8; int32 type = 20;
}
message NodeProto {
  repeated string input = 1; repeated string output = 2; string name = 3; string op_type = 4;
  repeated AttributeProto attribute = 5; string domain = 7;
}
message TensorShapeProto { message Dimension { int64 dim_value = 1; string dim_param = 2; } repeated Dimension dim = 1; }
message TypeProto { message Tensor { int32 elem_type = 1; TensorShapeProto shape = 2; } Tensor tensor_type = 1; }
message ValueInfoProto { string name = 1; TypeProto type = 2; }
message GraphProto {
  repeated NodeProto node = 1; string name = 2; repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11; repeated ValueInfoProto output = 12;
}
message ModelProto {
  int64 ir_version = 1; string producer_name = 2; GraphProto graph = 7; repeated OperatorSetIdProto opset_import = 8;
}
`;

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'spikeserve-onnx-'));
});
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

/** y [n, 3] = x [n, 2] @ W [2, 3] + b, with W and a second weight external, b inline. */
function smallGraph() {
  const g = new GraphBuilder('small.onnx.data');
  const x = g.input('x', DataType.FLOAT, ['n', 2]);
  const w = g.weight('w', [2, 3], () => Float32Array.from([1, 2, 3, 4, 5, 6]));
  const w2 = g.weight('w2', [3], () => Float32Array.from([10, 20, 30]));
  const y = g.scope('layer', () => g.op('Add', [g.op('MatMul', [x, w]), g.f32([0.5, -0.5, 1], [3])]));
  g.output('y', g.op('Mul', [y, w2]), DataType.FLOAT, ['n', 3]);
  const axisAttr = g.op('Softmax', [x], { axis: int(-1) });
  g.output('p', axisAttr, DataType.FLOAT, ['n', 2]);
  return g;
}

describe('protobuf encoding', () => {
  it('decodes with the onnx.proto field numbers', () => {
    const g = smallGraph();
    const bytes = encodeModel(g.toModel('small', new Map([['', 17]])));
    const root = protobuf.parse(ONNX_SUBSET).root;
    const decoded = root.lookupType('ModelProto').toObject(root.lookupType('ModelProto').decode(bytes), { longs: Number, bytes: Array }) as {
      irVersion: number;
      opsetImport: { domain?: string; version: number }[];
      graph: {
        node: { opType: string; input: string[]; output: string[]; name: string; attribute?: { name: string; i: number; type: number }[] }[];
        initializer: { name: string; dims: number[]; dataType: number; dataLocation?: number; rawData?: number[]; externalData?: { key: string; value: string }[] }[];
        input: { name: string; type: { tensorType: { elemType: number; shape: { dim: { dimValue?: number; dimParam?: string }[] } } } }[];
        output: { name: string }[];
      };
    };
    expect(decoded.irVersion).toBe(8);
    expect(decoded.opsetImport.map((o) => [o.domain ?? '', o.version])).toEqual([['', 17]]); // '' = ai.onnx
    expect(decoded.graph.input[0]?.name).toBe('x');
    expect(decoded.graph.input[0]?.type.tensorType.elemType).toBe(1);
    expect(decoded.graph.input[0]?.type.tensorType.shape.dim).toEqual([{ dimParam: 'n' }, { dimValue: 2 }]);
    expect(decoded.graph.output.map((o) => o.name)).toEqual(['y', 'p']);
    const matmul = decoded.graph.node.find((n) => n.opType === 'MatMul');
    expect(matmul?.name).toBe('/layer/MatMul');
    expect(matmul?.input).toEqual(['x', 'w']);
    const softmax = decoded.graph.node.find((n) => n.opType === 'Softmax');
    expect(softmax?.attribute).toEqual([{ name: 'axis', i: -1, type: 2 }]);
    const w = decoded.graph.initializer.find((t) => t.name === 'w');
    expect(w?.dims).toEqual([2, 3]);
    expect(w?.dataLocation).toBe(1);
    expect(w?.externalData).toEqual([
      { key: 'location', value: 'small.onnx.data' },
      { key: 'offset', value: '0' },
      { key: 'length', value: '24' },
    ]);
    const w2 = decoded.graph.initializer.find((t) => t.name === 'w2');
    expect(w2?.externalData?.find((e) => e.key === 'offset')?.value).toBe(String(EXTERNAL_ALIGN_BYTES));
    const inline = decoded.graph.initializer.find((t) => t.dataLocation === undefined);
    expect(new Float32Array(Uint8Array.from(inline?.rawData ?? []).buffer)).toEqual(Float32Array.from([0.5, -0.5, 1]));
  });

  it('runs in onnxruntime with external weights at aligned offsets', async () => {
    const dir = mkdtempSync(join(root, 'small-'));
    const g = smallGraph();
    const seen: number[] = [];
    g.writeExternalData(join(dir, 'small.onnx.data'), (done, total, bytes) => seen.push(done * 1e6 + total * 1e3 + bytes / 1e3));
    const file = readFileSync(join(dir, 'small.onnx.data'));
    expect(file.length).toBe(EXTERNAL_ALIGN_BYTES + 12);
    expect(new Float32Array(file.buffer.slice(file.byteOffset + EXTERNAL_ALIGN_BYTES, file.byteOffset + EXTERNAL_ALIGN_BYTES + 12))).toEqual(Float32Array.from([10, 20, 30]));
    expect(seen).toHaveLength(2);
    const modelPath = join(dir, 'small.onnx');
    (await import('node:fs')).writeFileSync(modelPath, encodeModel(g.toModel('small', new Map([['', 17]]))));
    const session = await ort.InferenceSession.create(modelPath);
    const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([1, 0, 2, -1]), [2, 2]) });
    // row 0: [1,2,3]+[.5,-.5,1] = [1.5,1.5,4]·[10,20,30]; row 1: 2·[1,2,3]−[4,5,6] = [-2,-1,0] + b
    expect(Array.from(out['y']?.data as Float32Array)).toEqual([15, 30, 120, -15, -30, 30]);
    await session.release();
  });

  it('a value that becomes a graph output keeps its readers inside an If branch (renamed there too)', async () => {
    const g = new GraphBuilder('unused.data');
    const x = g.input('x', DataType.FLOAT, [2]);
    const flag = g.input('flag', DataType.BOOL, []);
    const y = g.op('Neg', [x]); // becomes the output `y_out`, and the branches read it
    g.output('y_out', y, DataType.FLOAT, [2]);
    const then = g.subgraph('then', (b) => b.output(b.freshName('t'), b.op('Add', [y, b.f32([1, 1])]), DataType.FLOAT, [2]));
    const other = g.subgraph('else', (b) => b.output(b.freshName('e'), b.op('Mul', [y, b.f32([2, 2])]), DataType.FLOAT, [2]));
    g.output('z', g.op('If', [flag], { then_branch: { kind: 'graph', value: then }, else_branch: { kind: 'graph', value: other } }), DataType.FLOAT, [2]);
    const dir = mkdtempSync(join(root, 'if-'));
    const modelPath = join(dir, 'if.onnx');
    (await import('node:fs')).writeFileSync(modelPath, encodeModel(g.toModel('if', new Map([['', 17]]))));
    const session = await ort.InferenceSession.create(modelPath);
    for (const [cond, want] of [[true, [0, -2]], [false, [-2, -6]]] as const) {
      const out = await session.run({ x: new ort.Tensor('float32', Float32Array.from([1, 3]), [2]), flag: new ort.Tensor('bool', Uint8Array.of(cond ? 1 : 0), []) });
      expect(Array.from(out['z']?.data as Float32Array)).toEqual(want);
      expect(Array.from(out['y_out']?.data as Float32Array)).toEqual([-1, -3]);
    }
    await session.release();
  });
});

describe('build cache', () => {
  it('builds once, reuses the folder, leaves no temporary folders and reports progress to the end', () => {
    const config = parseModelConfig(tinyRawConfig({ numLayers: 2 }));
    const ckpt = randomCheckpoint(config, { seed: 9, gkLayout: 'lowrank' });
    const cacheDir = join(root, 'models');
    const progress: BuildProgress[] = [];
    const path = ensureBuiltModel(ckpt, { fusedOps: true, glaSubChunk: 16 }, { cacheDir, onProgress: (p) => progress.push(p) });
    expect(path).toBe(join(cacheDir, `${ckpt.hash}-${BUILDER_VERSION}-fused`, 'model.onnx'));
    const last = progress[progress.length - 1];
    expect(last?.tensorsDone).toBe(last?.tensorsTotal);
    expect(last?.bytesDone).toBe(last?.bytesTotal);
    expect(statSync(join(cacheDir, `${ckpt.hash}-${BUILDER_VERSION}-fused`, 'model.onnx.data')).size).toBe(last?.bytesTotal);
    for (let i = 1; i < progress.length; i++) expect(progress[i]!.bytesDone).toBeGreaterThan(progress[i - 1]!.bytesDone);

    const mtime = statSync(path).mtimeMs;
    let calls = 0;
    expect(ensureBuiltModel(ckpt, { fusedOps: true, glaSubChunk: 16 }, { cacheDir, onProgress: () => calls++ })).toBe(path);
    expect(calls).toBe(0);
    expect(statSync(path).mtimeMs).toBe(mtime);

    const plain = ensureBuiltModel(ckpt, { fusedOps: false, glaSubChunk: 8 }, { cacheDir });
    expect(plain).not.toBe(path);
    expect(readdirSync(cacheDir).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('writes the decode graph beside the step graph, and again when a folder lacks it', () => {
    const config = parseModelConfig(tinyRawConfig({ numLayers: 2 }));
    const ckpt = randomCheckpoint(config, { seed: 10, gkLayout: 'lowrank' });
    const options = { fusedOps: true, glaSubChunk: 16 };
    const path = ensureBuiltModel(ckpt, options, { cacheDir: join(root, 'decode-models') });
    const decodePath = join(dirname(path), DECODE_MODEL_FILE);
    const built = readFileSync(decodePath);
    rmSync(decodePath);
    expect(ensureDecodeGraph(ckpt, options, path)).toBe(decodePath);
    expect(readFileSync(decodePath).equals(built)).toBe(true);
    expect(readdirSync(dirname(path)).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });
});
