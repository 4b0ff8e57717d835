// Checks that the Hugging Face `tokenizers` library encodes like tools/train/bpe.py and decodes round-trip.
// usage: node check_tokenizer.js tokenizer.json samples.json   (samples.json: [{"text":..., "ids":[...]}])
const path = require('path');
const { Tokenizer } = require(path.join(__dirname, '../../node_modules/tokenizers'));
const [tokPath, samplesPath] = process.argv.slice(2);
const samples = JSON.parse(require('fs').readFileSync(samplesPath, 'utf8'));
(async () => {
  const tok = Tokenizer.fromFile(tokPath);
  let bad = 0;
  for (const s of samples) {
    const enc = await tok.encode(s.text, null, { addSpecialTokens: false });
    const ids = Array.from(enc.getIds());
    const same = ids.length === s.ids.length && ids.every((x, i) => x === s.ids[i]);
    const dec = await tok.decode(ids, false);
    if (!same || dec !== s.text) {
      bad++;
      console.log('MISMATCH', JSON.stringify(s.text.slice(0, 80)), same, ids.slice(0, 20), s.ids.slice(0, 20), JSON.stringify(dec.slice(0, 80)));
    }
  }
  console.log(`tokenizer check: ${samples.length - bad}/${samples.length} samples identical (ids + decode)`);
  process.exit(bad ? 1 : 0);
})();
