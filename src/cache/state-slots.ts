// StateSlots: preallocated, fixed-size slots of recurrent state, one slot per running sequence.
// A slot holds every recurrent state tensor of one sequence (GLA: one [Hkv, d, d] per GLA layer; the
// model's layer plan says which tensors there are — the cache only knows their sizes). Storage is one
// array per state tensor, [numSlots, floats], so gathering a batch is one copy per (tensor, sequence).

export interface StateSpec {
  /** Floats of each state tensor of one sequence (fp32), in the model's state order. */
  readonly stateFloats: readonly number[];
}

export class StateSlots {
  readonly spec: StateSpec;
  readonly numSlots: number;
  private readonly tensors: Float32Array[];
  /** views[tensor][slot]: that tensor's state of one slot, created once. */
  private readonly views: Float32Array[][];
  private readonly freeList: number[];
  private readonly inUse: Uint8Array;

  constructor(spec: StateSpec, numSlots: number) {
    if (!Number.isInteger(numSlots) || numSlots < 1) throw new RangeError(`numSlots must be an integer ≥ 1, got ${numSlots}`);
    this.spec = Object.freeze({ stateFloats: Object.freeze([...spec.stateFloats]) });
    this.numSlots = numSlots;
    this.tensors = spec.stateFloats.map((floats) => new Float32Array(numSlots * floats));
    this.views = this.tensors.map((tensor, i) => {
      const floats = spec.stateFloats[i] ?? 0;
      return Array.from({ length: numSlots }, (_, slot) => tensor.subarray(slot * floats, (slot + 1) * floats));
    });
    this.freeList = Array.from({ length: numSlots }, (_, i) => numSlots - 1 - i);
    this.inUse = new Uint8Array(numSlots);
  }

  /** Number of state tensors per sequence. */
  get numTensors(): number {
    return this.tensors.length;
  }

  /** Floats of state tensor `tensor` of one sequence. */
  floatsOf(tensor: number): number {
    return this.spec.stateFloats[tensor] ?? 0;
  }

  /** Bytes of state one sequence holds (every state tensor). */
  get bytesPerSlot(): number {
    return this.spec.stateFloats.reduce((n, f) => n + f, 0) * 4;
  }

  get numFree(): number {
    return this.freeList.length;
  }

  get numUsed(): number {
    return this.numSlots - this.freeList.length;
  }

  /** Takes a free slot with every state zeroed (the state at the start of a sequence), or null. */
  allocate(): number | null {
    const slot = this.freeList.pop();
    if (slot === undefined) return null;
    this.inUse[slot] = 1;
    for (let tensor = 0; tensor < this.tensors.length; tensor++) this.state(tensor, slot).fill(0);
    return slot;
  }

  release(slot: number): void {
    if (this.inUse[slot] !== 1) throw new Error(`state slot ${slot} is not in use`);
    this.inUse[slot] = 0;
    this.freeList.push(slot);
  }

  /** View of one state tensor of one slot. */
  state(tensor: number, slot: number): Float32Array {
    const view = this.views[tensor]?.[slot];
    if (view === undefined) throw new RangeError(`state (tensor ${tensor}, slot ${slot}) out of range`);
    return view;
  }
}
