// Protobuf encoding of the subset of onnx.proto the graph builder writes: ModelProto, GraphProto,
// NodeProto, AttributeProto (subgraphs included), TensorProto (inline raw data or EXTERNAL data), ValueInfoProto.
// Field numbers follow onnx/onnx.proto (IR version 8/10; opset 17, or 23 for the fused graph). Encoding only; nothing here reads.
import protobuf from 'protobufjs/minimal.js';

type Writer = protobuf.Writer;

/** TensorProto.DataType values used here. */
export const DataType = { FLOAT: 1, UINT8: 2, INT32: 6, INT64: 7, BOOL: 9, FLOAT16: 10, DOUBLE: 11 } as const;
export type DataTypeCode = (typeof DataType)[keyof typeof DataType];

/** A tensor whose bytes live in the proto (small constants). */
export interface InlineTensor {
  readonly kind: 'inline';
  readonly name: string;
  readonly dataType: DataTypeCode;
  readonly dims: readonly number[];
  /** Little-endian bytes of the elements. */
  readonly raw: Uint8Array;
}

/** A tensor whose bytes live in the external data file at [offset, offset + length). */
export interface ExternalTensor {
  readonly kind: 'external';
  readonly name: string;
  readonly dataType: DataTypeCode;
  readonly dims: readonly number[];
  readonly location: string;
  readonly offset: number;
  readonly length: number;
}

export type TensorProto = InlineTensor | ExternalTensor;

export type AttributeValue =
  | { readonly kind: 'int'; readonly value: number }
  | { readonly kind: 'float'; readonly value: number }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'ints'; readonly value: readonly number[] }
  | { readonly kind: 'floats'; readonly value: readonly number[] }
  | { readonly kind: 'tensor'; readonly value: InlineTensor }
  /** A subgraph (the body of Scan / Loop); it may read values of the enclosing graph by name. */
  | { readonly kind: 'graph'; readonly value: GraphProto };

export interface NodeProto {
  readonly opType: string;
  readonly name: string;
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
  readonly domain: string; // '' = ai.onnx
  readonly attributes: ReadonlyMap<string, AttributeValue>;
}

/** A graph input/output: element type and shape (a number is a fixed dim, a string a symbolic one). */
export interface ValueInfoProto {
  readonly name: string;
  readonly dataType: DataTypeCode;
  readonly dims: readonly (number | string)[];
}

export interface GraphProto {
  readonly name: string;
  readonly nodes: readonly NodeProto[];
  readonly initializers: readonly TensorProto[];
  readonly inputs: readonly ValueInfoProto[];
  readonly outputs: readonly ValueInfoProto[];
}

export interface ModelProto {
  readonly irVersion: number;
  readonly producerName: string;
  readonly producerVersion: string;
  /** domain ('' = ai.onnx) → opset version. */
  readonly opsets: ReadonlyMap<string, number>;
  readonly graph: GraphProto;
}

// Wire types: 0 varint, 2 length-delimited, 5 fixed32.
const tag = (field: number, wire: number): number => (field << 3) | wire;

function writeString(w: Writer, field: number, s: string): void {
  w.uint32(tag(field, 2)).string(s);
}

function writeInt64(w: Writer, field: number, v: number): void {
  // Writer.int64 takes a number (safe integers) and writes two's complement for negatives.
  w.uint32(tag(field, 0)).int64(v);
}

function writeMessage(w: Writer, field: number, body: (w: Writer) => void): void {
  w.uint32(tag(field, 2)).fork();
  body(w);
  w.ldelim();
}

function encodeTensor(w: Writer, t: TensorProto): void {
  for (const d of t.dims) writeInt64(w, 1, d); // dims (unpacked is valid for repeated int64)
  w.uint32(tag(2, 0)).int32(t.dataType); // data_type
  writeString(w, 8, t.name); // name
  if (t.kind === 'inline') {
    w.uint32(tag(9, 2)).bytes(t.raw); // raw_data
  } else {
    const entries: [string, string][] = [
      ['location', t.location],
      ['offset', String(t.offset)],
      ['length', String(t.length)],
    ];
    for (const [key, value] of entries) {
      writeMessage(w, 13, (m) => {
        writeString(m, 1, key);
        writeString(m, 2, value);
      }); // external_data: StringStringEntryProto
    }
    w.uint32(tag(14, 0)).int32(1); // data_location = EXTERNAL
  }
}

// AttributeProto.AttributeType
const AttrType = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, GRAPH: 5, FLOATS: 6, INTS: 7 } as const;

function encodeAttribute(w: Writer, name: string, a: AttributeValue): void {
  writeString(w, 1, name);
  switch (a.kind) {
    case 'float':
      w.uint32(tag(2, 5)).float(a.value);
      w.uint32(tag(20, 0)).int32(AttrType.FLOAT);
      break;
    case 'int':
      writeInt64(w, 3, a.value);
      w.uint32(tag(20, 0)).int32(AttrType.INT);
      break;
    case 'string':
      w.uint32(tag(4, 2)).bytes(Buffer.from(a.value, 'utf8'));
      w.uint32(tag(20, 0)).int32(AttrType.STRING);
      break;
    case 'tensor':
      writeMessage(w, 5, (m) => encodeTensor(m, a.value));
      w.uint32(tag(20, 0)).int32(AttrType.TENSOR);
      break;
    case 'graph':
      writeMessage(w, 6, (m) => encodeGraph(m, a.value));
      w.uint32(tag(20, 0)).int32(AttrType.GRAPH);
      break;
    case 'floats':
      for (const f of a.value) w.uint32(tag(7, 5)).float(f);
      w.uint32(tag(20, 0)).int32(AttrType.FLOATS);
      break;
    case 'ints':
      for (const i of a.value) writeInt64(w, 8, i);
      w.uint32(tag(20, 0)).int32(AttrType.INTS);
      break;
  }
}

function encodeNode(w: Writer, n: NodeProto): void {
  for (const i of n.inputs) writeString(w, 1, i);
  for (const o of n.outputs) writeString(w, 2, o);
  writeString(w, 3, n.name);
  writeString(w, 4, n.opType);
  for (const [name, a] of n.attributes) writeMessage(w, 5, (m) => encodeAttribute(m, name, a));
  if (n.domain !== '') writeString(w, 7, n.domain);
}

function encodeValueInfo(w: Writer, v: ValueInfoProto): void {
  writeString(w, 1, v.name);
  // type: TypeProto { tensor_type (1): TypeProto.Tensor { elem_type (1), shape (2): TensorShapeProto } }
  writeMessage(w, 2, (type) =>
    writeMessage(type, 1, (tt) => {
      tt.uint32(tag(1, 0)).int32(v.dataType);
      writeMessage(tt, 2, (shape) => {
        for (const d of v.dims) {
          writeMessage(shape, 1, (dim) => {
            if (typeof d === 'number') writeInt64(dim, 1, d); // dim_value
            else writeString(dim, 2, d); // dim_param
          });
        }
      });
    }),
  );
}

function encodeGraph(w: Writer, g: GraphProto): void {
  for (const n of g.nodes) writeMessage(w, 1, (m) => encodeNode(m, n));
  writeString(w, 2, g.name);
  for (const t of g.initializers) writeMessage(w, 5, (m) => encodeTensor(m, t));
  for (const v of g.inputs) writeMessage(w, 11, (m) => encodeValueInfo(m, v));
  for (const v of g.outputs) writeMessage(w, 12, (m) => encodeValueInfo(m, v));
}

/** Serialises a ModelProto to bytes. */
export function encodeModel(model: ModelProto): Uint8Array {
  const w = protobuf.Writer.create();
  writeInt64(w, 1, model.irVersion); // ir_version
  writeString(w, 2, model.producerName);
  writeString(w, 3, model.producerVersion);
  writeMessage(w, 7, (m) => encodeGraph(m, model.graph)); // graph
  for (const [domain, version] of model.opsets) {
    writeMessage(w, 8, (m) => {
      writeString(m, 1, domain);
      writeInt64(m, 2, version);
    }); // opset_import: OperatorSetIdProto
  }
  return w.finish();
}
