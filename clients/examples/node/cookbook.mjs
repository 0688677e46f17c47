// Fine-tune a model on Tunewright with the stock `openai` Node SDK, then talk to it.
//
// The cookbook flow: upload a training file, start a job, follow its events until it ends, then chat with the
// fine-tuned model (streaming). Nothing here is Tunewright-specific but the base URL.
//
//   cd clients/examples/node && npm ci
//   export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-proj-…
//   node cookbook.mjs
//
// Settings (environment): EXAMPLE_MODEL, the base model (default smollm2-135m-instruct); EXAMPLE_TRAINING_FILE,
// a chat JSONL file (default: ../train.jsonl); EXAMPLE_POLL_S, seconds between polls (default 2).
// Exits 0 once the model answered, 1 if the job did not succeed.
import fs from "node:fs";
import { basename } from "node:path";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import OpenAI from "openai";

const MODEL = process.env.EXAMPLE_MODEL || "smollm2-135m-instruct";
const TRAINING_FILE = process.env.EXAMPLE_TRAINING_FILE || fileURLToPath(new URL("../train.jsonl", import.meta.url));
const POLL_S = Number(process.env.EXAMPLE_POLL_S || "2");
const ENDED = new Set(["succeeded", "failed", "cancelled"]);

async function main() {
  const client = new OpenAI(); // reads OPENAI_BASE_URL and OPENAI_API_KEY

  // 1. Upload the training data. A malformed line is refused here, with its number.
  const training = await client.files.create({ file: fs.createReadStream(TRAINING_FILE), purpose: "fine-tune" });
  console.log(`Uploaded ${basename(TRAINING_FILE)} as ${training.id} (${training.bytes} bytes)`);

  // 2. Start the job.
  let job = await client.fineTuning.jobs.create({
    model: MODEL,
    training_file: training.id,
    suffix: "support-bot",
    method: { type: "supervised", supervised: { hyperparameters: { n_epochs: 2 } } },
  });
  console.log(`Created ${job.id} on ${MODEL}: ${job.status}`);

  // 3. Follow it: print new events (the API lists them newest first) until the job ends.
  const seen = new Set();
  for (;;) {
    job = await client.fineTuning.jobs.retrieve(job.id);
    const events = await client.fineTuning.jobs.listEvents(job.id, { limit: 100 });
    for (const event of [...events.data].reverse()) {
      if (!seen.has(event.id)) {
        seen.add(event.id);
        console.log(`  ${event.message}`);
      }
    }
    if (ENDED.has(job.status)) break;
    await sleep(POLL_S * 1000);
  }
  if (job.status !== "succeeded") {
    console.error(`The job ${job.status}: ${job.error?.message ?? ""}`);
    return 1;
  }
  console.log(`Fine-tuned model: ${job.fine_tuned_model} (${job.trained_tokens} trained tokens)`);
  const checkpoints = await client.fineTuning.jobs.checkpoints.list(job.id);
  for (const checkpoint of checkpoints.data) {
    console.log(`  checkpoint ${checkpoint.fine_tuned_model_checkpoint}: loss ${checkpoint.metrics.train_loss.toFixed(3)}`);
  }

  // 4. Talk to it, streaming the reply.
  const question = "Where is my order?";
  process.stdout.write(`User: ${question}\nAssistant: `);
  const stream = await client.chat.completions.create({
    model: job.fine_tuned_model,
    messages: [
      { role: "system", content: "You are Sam, the support assistant of an online shop." },
      { role: "user", content: question },
    ],
    max_completion_tokens: 40,
    stream: true,
  });
  for await (const chunk of stream) {
    const text = chunk.choices[0]?.delta?.content;
    if (text) process.stdout.write(text);
  }
  process.stdout.write("\n");
  return 0;
}

process.exitCode = await main();
