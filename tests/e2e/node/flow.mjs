// The control-plane flow of tests/e2e/test_serve_sdk.py, driven by the official openai Node SDK.
//
// Env: TUNEWRIGHT_E2E_BASE_URL (".../v1"), TUNEWRIGHT_E2E_KEY_A and TUNEWRIGHT_E2E_KEY_B (project keys of two
// organizations). Prints one JSON summary line and exits 0, or prints the failure and exits 1.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import OpenAI, { toFile } from "openai";
import { VERSION } from "openai/version";

const ASSETS = new URL("../../assets/", import.meta.url);
const BASE = "smollm2-135m-instruct";

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`environment variable ${name} is not set`);
  return value;
}

// Await `promise`, which must reject with an instance of `errorClass`; returns the error.
async function rejects(promise, errorClass, what) {
  try {
    await promise;
  } catch (err) {
    if (err instanceof errorClass) return err;
    throw new Error(`${what}: expected ${errorClass.name}, got ${err?.constructor?.name}: ${err?.message}`);
  }
  throw new Error(`${what}: expected ${errorClass.name}, but the call succeeded`);
}

async function main() {
  const baseURL = env("TUNEWRIGHT_E2E_BASE_URL");
  const a = new OpenAI({ baseURL, apiKey: env("TUNEWRIGHT_E2E_KEY_A"), maxRetries: 0 });
  const b = new OpenAI({ baseURL, apiKey: env("TUNEWRIGHT_E2E_KEY_B"), maxRetries: 0 });
  const data = await readFile(new URL("valid_chat.jsonl", ASSETS));

  // files: upload, retrieve, exact bytes back
  const uploaded = await a.files.create({ file: await toFile(data, "train.jsonl"), purpose: "fine-tune" });
  assert.match(uploaded.id, /^file-/);
  assert.equal(uploaded.bytes, data.length);
  assert.equal(uploaded.filename, "train.jsonl");
  assert.equal((await a.files.retrieve(uploaded.id)).status, "processed");
  const content = Buffer.from(await (await a.files.content(uploaded.id)).arrayBuffer());
  assert.ok(content.equals(data), "downloaded content differs from the uploaded bytes");

  // a bad training file: 400 naming the line and the `file` param
  const bad = await readFile(new URL("bad_json_line14.jsonl", ASSETS));
  const badErr = await rejects(
    a.files.create({ file: await toFile(bad, "bad.jsonl"), purpose: "fine-tune" }),
    OpenAI.BadRequestError,
    "bad file upload",
  );
  assert.equal(badErr.status, 400);
  assert.match(badErr.message, /line 14/);
  assert.equal(badErr.param, "file");

  // jobs: create, list with a metadata filter, events, cancel, cancel again
  const job = await a.fineTuning.jobs.create({
    model: BASE,
    training_file: uploaded.id,
    suffix: "e2e-node",
    metadata: { run: "node" },
  });
  assert.equal(job.status, "validating_files");
  const listed = await a.fineTuning.jobs.list({ metadata: { run: "node" } });
  assert.deepEqual(
    listed.data.map((j) => j.id),
    [job.id],
  );
  const events = await a.fineTuning.jobs.listEvents(job.id);
  assert.ok(events.data[0].message.startsWith("Created fine-tuning job"), events.data[0].message);
  assert.equal((await a.fineTuning.jobs.cancel(job.id)).status, "cancelled");
  const stateErr = await rejects(a.fineTuning.jobs.cancel(job.id), OpenAI.BadRequestError, "second cancel");
  assert.equal(stateErr.code, "invalid_job_state");

  // models
  const models = [];
  for await (const model of a.models.list()) models.push(model.id);
  assert.ok(models.includes(BASE), `models list lacks ${BASE}: ${models}`);

  // tenant isolation: nothing of a's is visible to b
  assert.deepEqual((await b.files.list()).data, []);
  assert.deepEqual((await b.fineTuning.jobs.list()).data, []);
  const notFound = await rejects(b.files.retrieve(uploaded.id), OpenAI.NotFoundError, "b retrieves a's file");
  assert.equal(notFound.status, 404);
  await rejects(b.fineTuning.jobs.retrieve(job.id), OpenAI.NotFoundError, "b retrieves a's job");

  console.log(
    JSON.stringify({
      ok: true,
      sdk: VERSION,
      file: uploaded.id,
      job: job.id,
      bad_file_error: badErr.message,
      models: models.length,
    }),
  );
}

try {
  await main();
  process.exit(0);
} catch (err) {
  console.error(err?.stack ?? String(err));
  process.exit(1);
}
