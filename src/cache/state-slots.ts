// StateSlots: preallocated, fixed-size slots of recurrent GLA state, one slot per running sequence.
// A slot holds the state of ALL GLA layers of one sequence; per layer the state is [Hkv, d, d] fp32.
// Storage is one array per GLA layer, [numSlots, Hkv, d, d], so gathering a batch is one copy per
// (layer, sequence).

export interface StateSpec {
  readonly numGlaLayers: number;
  readonly numKvHeads: number; // Hkv
  readonly headDim: number; // d
}

export class StateSlots {
  readonly spec: StateSpec;
  readonly numSlots: number;
  /** Floats of one layer's state of one sequence: Hkv · d · d. */
  readonly floatsPerLayer: number;
  private readonly layers: Float32Array[];
  /** views[layer][slot]: [Hkv, d, d] view, created once. */
  private readonly views: Float32Array[][];
  private readonly freeList: number[];
  private readonly inUse: Uint8Array;

  constructor(spec: StateSpec, numSlots: number) {
    if (!Number.isInteger(numSlots) || numSlots < 1) throw new RangeError(`numSlots must be an integer ≥ 1, got ${numSlots}`);
    this.spec = Object.freeze({ ...spec });
    this.numSlots = numSlots;
    this.floatsPerLayer = spec.numKvHeads * spec.headDim * spec.headDim;
    this.layers = Array.from({ length: spec.numGlaLayers }, () => new Float32Array(numSlots * this.floatsPerLayer));
    this.views = this.layers.map((layer) =>
      Array.from({ length: numSlots }, (_, slot) => layer.subarray(slot * this.floatsPerLayer, (slot + 1) * this.floatsPerLayer)),
    );
    this.freeList = Array.from({ length: numSlots }, (_, i) => numSlots - 1 - i);
    this.inUse = new Uint8Array(numSlots);
  }

  /** Bytes of state one sequence holds (all GLA layers). */
  get bytesPerSlot(): number {
    return this.spec.numGlaLayers * this.floatsPerLayer * 4;
  }

  get numFree(): number {
    return this.freeList.length;
  }

  get numUsed(): number {
    return this.numSlots - this.freeList.length;
  }

  /** Takes a free slot with every layer's state zeroed (S = 0 at the start of a sequence), or null. */
  allocate(): number | null {
    const slot = this.freeList.pop();
    if (slot === undefined) return null;
    this.inUse[slot] = 1;
    for (let layer = 0; layer < this.layers.length; layer++) this.state(layer, slot).fill(0);
    return slot;
  }

  release(slot: number): void {
    if (this.inUse[slot] !== 1) throw new Error(`state slot ${slot} is not in use`);
    this.inUse[slot] = 0;
    this.freeList.push(slot);
  }

  /** View of one GLA layer's state of one slot: [Hkv, d, d]. */
  state(glaLayer: number, slot: number): Float32Array {
    const view = this.views[glaLayer]?.[slot];
    if (view === undefined) throw new RangeError(`state (GLA layer ${glaLayer}, slot ${slot}) out of range`);
    return view;
  }
}
