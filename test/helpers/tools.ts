// Test helper: programs the system provides (Chromium, bible, promtool). A test that needs one runs
// where it is installed and is skipped, with a printed reason, where it is not — except under CI
// (`CI` set, as in .ci/run, which installs all of them): there a missing program fails the test
// file, so CI can never pass by skipping.
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** `CI` is set to anything but '', 'false' or '0'. */
export function isCi(): boolean {
  const v = process.env['CI'];
  return v !== undefined && v !== '' && v !== 'false' && v !== '0';
}

/** True where an executable `name` is on the PATH. */
export function onPath(name: string): boolean {
  return (process.env['PATH'] ?? '').split(delimiter).some((dir) => {
    if (dir === '') return false;
    try {
      accessSync(join(dir, name), constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * Whether the tests of `file` that need `what` run. Missing: under CI an Error (the file fails);
 * elsewhere a warning naming what is missing and how to install it, and false (the caller skips).
 */
export function requireTool(file: string, what: string, present: boolean, install: string): boolean {
  if (present) return true;
  const why = `${what} is not installed (${install})`;
  if (isCi()) throw new Error(`${file}: ${why}, and CI must run these tests, not skip them`);
  console.warn(`${file}: skipped — ${why}`);
  return false;
}
