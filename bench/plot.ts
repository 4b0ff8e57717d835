// A small log-log chart writer for the benchmark results: RGB raster, lines, markers, a 5×7 bitmap
// font, and a PNG encoder on node:zlib (no plotting dependency). Enough for "TTFT and RSS against
// prompt length" panels; not a general plotting library.
//
// PNG layout: signature, IHDR (w, h, bit depth 8, colour type 2 = RGB), one IDAT with the zlib stream
// of the rows (each row prefixed with filter byte 0 = None), IEND. Each chunk is
// length(4, BE) · type(4) · data · CRC-32(type · data).
import { writeFileSync } from 'node:fs';
import { crc32, deflateSync } from 'node:zlib';

export type Rgb = readonly [number, number, number];

export const COLORS = {
  black: [0, 0, 0],
  grid: [225, 225, 225],
  axis: [90, 90, 90],
  blue: [31, 119, 180],
  orange: [255, 127, 14],
  green: [44, 160, 44],
  red: [214, 39, 40],
  purple: [148, 103, 189],
} as const satisfies Record<string, Rgb>;

// 5×7 glyphs, column-major: 5 bytes per glyph, bit r of byte c is the pixel at (column c, row r).
const FONT: Readonly<Record<string, readonly number[]>> = {
  ' ': [0, 0, 0, 0, 0], '0': [0x3e, 0x51, 0x49, 0x45, 0x3e], '1': [0x00, 0x42, 0x7f, 0x40, 0x00],
  '2': [0x42, 0x61, 0x51, 0x49, 0x46], '3': [0x21, 0x41, 0x45, 0x4b, 0x31], '4': [0x18, 0x14, 0x12, 0x7f, 0x10],
  '5': [0x27, 0x45, 0x45, 0x45, 0x39], '6': [0x3c, 0x4a, 0x49, 0x49, 0x30], '7': [0x01, 0x71, 0x09, 0x05, 0x03],
  '8': [0x36, 0x49, 0x49, 0x49, 0x36], '9': [0x06, 0x49, 0x49, 0x29, 0x1e], A: [0x7e, 0x11, 0x11, 0x11, 0x7e],
  B: [0x7f, 0x49, 0x49, 0x49, 0x36], C: [0x3e, 0x41, 0x41, 0x41, 0x22], D: [0x7f, 0x41, 0x41, 0x22, 0x1c],
  E: [0x7f, 0x49, 0x49, 0x49, 0x41], F: [0x7f, 0x09, 0x09, 0x09, 0x01], G: [0x3e, 0x41, 0x49, 0x49, 0x7a],
  H: [0x7f, 0x08, 0x08, 0x08, 0x7f], I: [0x00, 0x41, 0x7f, 0x41, 0x00], J: [0x20, 0x40, 0x41, 0x3f, 0x01],
  K: [0x7f, 0x08, 0x14, 0x22, 0x41], L: [0x7f, 0x40, 0x40, 0x40, 0x40], M: [0x7f, 0x02, 0x0c, 0x02, 0x7f],
  N: [0x7f, 0x04, 0x08, 0x10, 0x7f], O: [0x3e, 0x41, 0x41, 0x41, 0x3e], P: [0x7f, 0x09, 0x09, 0x09, 0x06],
  Q: [0x3e, 0x41, 0x51, 0x21, 0x5e], R: [0x7f, 0x09, 0x19, 0x29, 0x46], S: [0x46, 0x49, 0x49, 0x49, 0x31],
  T: [0x01, 0x01, 0x7f, 0x01, 0x01], U: [0x3f, 0x40, 0x40, 0x40, 0x3f], V: [0x1f, 0x20, 0x40, 0x20, 0x1f],
  W: [0x3f, 0x40, 0x38, 0x40, 0x3f], X: [0x63, 0x14, 0x08, 0x14, 0x63], Y: [0x07, 0x08, 0x70, 0x08, 0x07],
  Z: [0x61, 0x51, 0x49, 0x45, 0x43], '.': [0x00, 0x60, 0x60, 0x00, 0x00], '-': [0x08, 0x08, 0x08, 0x08, 0x08],
  '/': [0x20, 0x10, 0x08, 0x04, 0x02], '(': [0x00, 0x1c, 0x22, 0x41, 0x00], ')': [0x00, 0x41, 0x22, 0x1c, 0x00],
  '%': [0x23, 0x13, 0x08, 0x64, 0x62], ':': [0x00, 0x36, 0x36, 0x00, 0x00], '+': [0x08, 0x08, 0x3e, 0x08, 0x08],
  '=': [0x14, 0x14, 0x14, 0x14, 0x14], ',': [0x00, 0x50, 0x30, 0x00, 0x00], '_': [0x40, 0x40, 0x40, 0x40, 0x40],
  '*': [0x14, 0x08, 0x3e, 0x08, 0x14], '^': [0x04, 0x02, 0x01, 0x02, 0x04], '<': [0x08, 0x14, 0x22, 0x41, 0x00],
  '>': [0x00, 0x41, 0x22, 0x14, 0x08], '?': [0x02, 0x01, 0x51, 0x09, 0x06],
};
const GLYPH_ADVANCE = 6; // 5 columns + 1 blank, in font pixels

/** An RGB raster with a few drawing primitives; (0, 0) is the top-left pixel. */
export class Canvas {
  readonly pixels: Uint8Array; // [height, width, 3]

  constructor(
    readonly width: number,
    readonly height: number,
    background: Rgb = [255, 255, 255],
  ) {
    this.pixels = new Uint8Array(width * height * 3);
    for (let i = 0; i < width * height; i++) this.pixels.set(background, i * 3);
  }

  setPixel(x: number, y: number, c: Rgb): void {
    const xi = Math.round(x);
    const yi = Math.round(y);
    if (xi < 0 || yi < 0 || xi >= this.width || yi >= this.height) return;
    this.pixels.set(c, (yi * this.width + xi) * 3);
  }

  fillRect(x: number, y: number, w: number, h: number, c: Rgb): void {
    for (let j = 0; j < h; j++) for (let i = 0; i < w; i++) this.setPixel(x + i, y + j, c);
  }

  /** Line of `thickness` pixels; with `dashPixels` > 0, alternate drawn and skipped runs of that length. */
  line(x0: number, y0: number, x1: number, y1: number, c: Rgb, thickness = 1, dashPixels = 0): void {
    const steps = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    const r = (thickness - 1) / 2;
    for (let s = 0; s <= steps; s++) {
      if (dashPixels > 0 && Math.floor(s / dashPixels) % 2 === 1) continue;
      const x = x0 + ((x1 - x0) * s) / steps;
      const y = y0 + ((y1 - y0) * s) / steps;
      for (let dy = -Math.floor(r); dy <= Math.ceil(r); dy++) for (let dx = -Math.floor(r); dx <= Math.ceil(r); dx++) this.setPixel(x + dx, y + dy, c);
    }
  }

  disc(cx: number, cy: number, radius: number, c: Rgb): void {
    for (let dy = -radius; dy <= radius; dy++) for (let dx = -radius; dx <= radius; dx++) if (dx * dx + dy * dy <= radius * radius + radius) this.setPixel(cx + dx, cy + dy, c);
  }

  /** Text in the 5×7 font, `scale` screen pixels per font pixel; lower case is drawn as upper case. */
  text(x: number, y: number, s: string, c: Rgb, scale = 1, vertical = false): void {
    let pen = 0;
    for (const ch of s.toUpperCase()) {
      const glyph = FONT[ch] ?? FONT['?'] ?? [];
      for (const [col, bits] of glyph.entries()) {
        for (let row = 0; row < 7; row++) {
          if (((bits >> row) & 1) === 0) continue;
          // Vertical text reads bottom to top (rotated 90° counter-clockwise).
          const gx = vertical ? row : pen + col;
          const gy = vertical ? -(pen + col) : row;
          this.fillRect(x + gx * scale, y + gy * scale, scale, scale, c);
        }
      }
      pen += GLYPH_ADVANCE;
    }
  }

  static textWidth(s: string, scale = 1): number {
    return Math.max(0, s.length * GLYPH_ADVANCE - 1) * scale;
  }
}

/** PNG bytes of the canvas (8-bit RGB, no interlace). */
export function encodePng(canvas: Canvas): Buffer {
  const { width, height, pixels } = canvas;
  const rowBytes = width * 3;
  const raw = Buffer.alloc((rowBytes + 1) * height);
  for (let y = 0; y < height; y++) {
    raw[y * (rowBytes + 1)] = 0; // filter: None
    raw.set(pixels.subarray(y * rowBytes, (y + 1) * rowBytes), y * (rowBytes + 1) + 1);
  }
  const chunk = (type: string, data: Buffer): Buffer => {
    const typed = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const out = Buffer.alloc(8 + data.length + 4);
    out.writeUInt32BE(data.length, 0);
    typed.copy(out, 4);
    out.writeUInt32BE(crc32(typed), 8 + data.length);
    return out;
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // bit depth, colour type RGB, compression, filter, interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

export interface Series {
  readonly name: string;
  readonly color: Rgb;
  readonly points: readonly (readonly [number, number])[];
  /** Dashed line, no markers: for fitted / extrapolated curves. */
  readonly dashed?: boolean;
}

export interface Tick {
  readonly value: number;
  readonly label: string;
}

export interface Panel {
  readonly title: string;
  readonly xLabel: string;
  readonly yLabel: string;
  readonly series: readonly Series[];
  /** Default: one tick per power of ten. */
  readonly xTicks?: readonly Tick[];
  readonly yTicks?: readonly Tick[];
}

/** 1500 → "1.5K", 4194304 → "4.2M", 0.05 → "0.05". */
export function shortNumber(v: number): string {
  const units: readonly [number, string][] = [[1e9, 'G'], [1e6, 'M'], [1e3, 'K']];
  for (const [size, suffix] of units) if (Math.abs(v) >= size) return `${Number((v / size).toPrecision(3))}${suffix}`;
  return `${Number(v.toPrecision(3))}`;
}

/** Powers of ten covering [lo, hi]; also 2× and 5× them under two decades, every digit under one. */
function decadeTicks(lo: number, hi: number): Tick[] {
  const span = Math.log10(hi / lo);
  const steps = span < 1 ? [1, 2, 3, 4, 5, 6, 7, 8, 9] : span < 2 ? [1, 2, 5] : [1];
  const ticks: Tick[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of steps) ticks.push({ value: m * 10 ** e, label: shortNumber(m * 10 ** e) });
  }
  return ticks;
}

/** Draws one log-log panel into the rectangle (x0, y0, w, h) of the canvas. */
function drawPanel(cv: Canvas, p: Panel, x0: number, y0: number, w: number, h: number): void {
  const left = x0 + 78;
  const right = x0 + w - 16;
  const top = y0 + 34;
  const bottom = y0 + h - 52;
  const pts = p.series.flatMap((s) => s.points).filter(([x, y]) => x > 0 && y > 0 && Number.isFinite(x) && Number.isFinite(y));
  if (pts.length === 0) return;
  const xs = pts.map(([x]) => x);
  const ys = pts.map(([, y]) => y);
  // Axis ranges: data range padded by 10% of a decade each side (log space).
  const lx0 = Math.log10(Math.min(...xs)) - 0.1;
  const lx1 = Math.log10(Math.max(...xs)) + 0.1;
  const ly0 = Math.floor(Math.log10(Math.min(...ys)) * 2) / 2 - 0.1;
  const ly1 = Math.ceil(Math.log10(Math.max(...ys)) * 2) / 2 + 0.1;
  const px = (x: number): number => left + ((Math.log10(x) - lx0) / (lx1 - lx0)) * (right - left);
  const py = (y: number): number => bottom - ((Math.log10(y) - ly0) / (ly1 - ly0)) * (bottom - top);

  const xTicks = (p.xTicks ?? decadeTicks(10 ** lx0, 10 ** lx1)).filter((t) => Math.log10(t.value) >= lx0 && Math.log10(t.value) <= lx1);
  const yTicks = (p.yTicks ?? decadeTicks(10 ** ly0, 10 ** ly1)).filter((t) => Math.log10(t.value) >= ly0 && Math.log10(t.value) <= ly1);
  for (const t of xTicks) {
    const x = px(t.value);
    cv.line(x, top, x, bottom, COLORS.grid);
    cv.line(x, bottom, x, bottom + 4, COLORS.axis);
    cv.text(x - Canvas.textWidth(t.label) / 2, bottom + 8, t.label, COLORS.black);
  }
  for (const t of yTicks) {
    const y = py(t.value);
    cv.line(left, y, right, y, COLORS.grid);
    cv.line(left - 4, y, left, y, COLORS.axis);
    cv.text(left - 8 - Canvas.textWidth(t.label), y - 3, t.label, COLORS.black);
  }
  cv.line(left, top, left, bottom, COLORS.axis);
  cv.line(left, bottom, right, bottom, COLORS.axis);
  cv.text(x0 + (w - Canvas.textWidth(p.title, 2)) / 2, y0 + 8, p.title, COLORS.black, 2);
  cv.text(left + (right - left - Canvas.textWidth(p.xLabel)) / 2, bottom + 26, p.xLabel, COLORS.black);
  cv.text(x0 + 10, top + (bottom - top + Canvas.textWidth(p.yLabel)) / 2, p.yLabel, COLORS.black, 1, true);

  for (const s of p.series) {
    const sp = s.points.filter(([x, y]) => x > 0 && y > 0 && Number.isFinite(x) && Number.isFinite(y));
    for (let i = 1; i < sp.length; i++) {
      const [a, b] = [sp[i - 1], sp[i]];
      if (a === undefined || b === undefined) continue;
      cv.line(px(a[0]), py(a[1]), px(b[0]), py(b[1]), s.color, s.dashed === true ? 1 : 2, s.dashed === true ? 5 : 0);
    }
    if (s.dashed !== true) for (const [x, y] of sp) cv.disc(px(x), py(y), 3, s.color);
  }

  // Legend, top-left inside the plot area.
  let ly = top + 8;
  for (const s of p.series) {
    if (s.dashed === true) cv.line(left + 10, ly + 3, left + 30, ly + 3, s.color, 1, 4);
    else {
      cv.line(left + 10, ly + 3, left + 30, ly + 3, s.color, 2);
      cv.disc(left + 20, ly + 3, 3, s.color);
    }
    cv.text(left + 36, ly, s.name, COLORS.black);
    ly += 13;
  }
}

export interface LayoutOptions {
  readonly panelWidth?: number;
  readonly panelHeight?: number;
  readonly columns?: number;
}

/** Panels on a grid, `columns` per row. */
export function renderPanels(panels: readonly Panel[], opts: LayoutOptions = {}): Canvas {
  const w = opts.panelWidth ?? 620;
  const h = opts.panelHeight ?? 460;
  const columns = Math.max(1, Math.min(opts.columns ?? panels.length, panels.length));
  const rows = Math.ceil(panels.length / columns);
  const cv = new Canvas(w * columns, h * rows);
  for (const [i, p] of panels.entries()) drawPanel(cv, p, (i % columns) * w, Math.floor(i / columns) * h, w, h);
  return cv;
}

export function writePanelsPng(file: string, panels: readonly Panel[], opts: LayoutOptions = {}): void {
  writeFileSync(file, encodePng(renderPanels(panels, opts)));
}
