// Test helper: Debian's headless Chromium through playwright-core, launched the one way the browser
// tests use it. `chromiumTests(file)` says whether a browser test file runs: where /usr/bin/chromium
// is absent it skips, saying why, except under CI, where that is a failure (./tools.ts).
import { existsSync } from 'node:fs';
import { chromium, type Browser } from 'playwright-core';
import { requireTool } from './tools.ts';

export const CHROMIUM = '/usr/bin/chromium';

export function chromiumTests(file: string): boolean {
  return requireTool(file, CHROMIUM, existsSync(CHROMIUM), 'apt-get install chromium');
}

export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
}
