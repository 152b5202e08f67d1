// Runs a GGUF file in real llama.cpp (node-llama-cpp) for tests/python/test_gguf.py.
// Usage: node gguf_llamacpp.mjs job.json; the job: {model, texts, prompt, greedy}.
// Prints JSON: llama.cpp's token ids of each text (BOS first), the negative log
// likelihood of each text's tokens after the first, and the greedy continuation ids of
// the prompt. Copied next to node_modules at run time (ESM resolves packages from the
// script's folder).
import {readFileSync} from "node:fs";
import {getLlama, LlamaLogLevel} from "node-llama-cpp";

const job = JSON.parse(readFileSync(process.argv[2], "utf8"));
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: job.model});
const ctx = await model.createContext({contextSize: 512, batchSize: 512, threads: 1});
const seq = ctx.getSequence();

async function nextProbabilities(toks) {
  await seq.clearHistory();
  const out = await seq.controlledEvaluate(toks.map((t, i) => [t, {generateNext: {probabilities: true}}]));
  return out;
}

// BOS first where the vocabulary has one (byte-level BPE ones such as Qwen2's have none)
const head = model.tokens.bos == null ? [] : [model.tokens.bos];
const tokens = [], nll = [];
for (const text of job.texts) {
  const toks = [...head, ...model.tokenize(text, false)].slice(0, 512);
  const out = await nextProbabilities(toks.slice(0, -1));
  let sum = 0;
  for (let i = 0; i + 1 < toks.length; i++) {
    const p = out[i].next.probabilities.get(toks[i + 1]) ?? 0;
    sum -= Math.log(p);
  }
  tokens.push(toks);
  nll.push(sum);
}

const greedy = [...head, ...model.tokenize(job.prompt, false)];
const promptLength = greedy.length;
for (let step = 0; step < job.greedy; step++) {
  const out = await nextProbabilities(greedy);
  let best = -1, bestP = -1;
  for (const [tok, p] of out[out.length - 1].next.probabilities) if (p > bestP) { best = tok; bestP = p; }
  greedy.push(best);
}
console.log(JSON.stringify({tokens, nll, prompt: greedy.slice(0, promptLength), greedy: greedy.slice(promptLength)}));
await ctx.dispose();
await model.dispose();
await llama.dispose();
