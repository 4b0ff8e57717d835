// A child process for test/snapshot-store.test.ts: writes large snapshots into a folder, one after
// the other, printing "wrote <n>" after each is published, until it is killed (the test kills it with
// SIGKILL while it writes). Arguments: <folder> <floats per snapshot>.
import { SnapshotStore } from '../../src/cache/snapshot-store.ts';
import { childExpectation, childKey } from './snapshot-fixtures.ts';

const [dir, floatsArg] = process.argv.slice(2);
if (dir === undefined || floatsArg === undefined) throw new Error('usage: snapshot-writer-child <folder> <floats>');
const floats = Number(floatsArg);
const store = new SnapshotStore({
  dir,
  maxBytes: 2 ** 40,
  expect: childExpectation(floats),
  readTimeoutMs: 60_000,
  maxWriteBytesInFlight: 2 ** 40,
});
const data = Float32Array.from({ length: floats }, (_, i) => i % 977);
for (let n = 0; ; n++) {
  data[0] = n;
  const outcome = await store.write(childKey(n), 64, [data], []);
  if (outcome !== 'written') throw new Error(`write ${n}: ${outcome}`);
  process.stdout.write(`wrote ${n}\n`);
}
