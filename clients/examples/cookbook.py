"""Fine-tune a model on Tunewright with the stock `openai` Python SDK, then talk to it.

The cookbook flow: upload a training file, start a job, follow its events until it ends, then chat with the
fine-tuned model (streaming). Nothing here is Tunewright-specific but the base URL.

    pip install openai
    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-proj-…
    python clients/examples/cookbook.py

Settings (environment): EXAMPLE_MODEL, the base model (default smollm2-135m-instruct); EXAMPLE_TRAINING_FILE,
a chat JSONL file (default: train.jsonl beside this script); EXAMPLE_POLL_S, seconds between polls (default 2).
Exits 0 once the model answered, 1 if the job did not succeed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from openai import OpenAI

MODEL = os.environ.get("EXAMPLE_MODEL", "smollm2-135m-instruct")
TRAINING_FILE = Path(os.environ.get("EXAMPLE_TRAINING_FILE", Path(__file__).with_name("train.jsonl")))
POLL_S = float(os.environ.get("EXAMPLE_POLL_S", "2"))
ENDED = {"succeeded", "failed", "cancelled"}


def main() -> int:
    """Upload, train, follow, chat; return the exit status."""
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY

    # 1. Upload the training data. A malformed line is refused here, with its number.
    with TRAINING_FILE.open("rb") as data:
        training = client.files.create(file=data, purpose="fine-tune")
    print(f"Uploaded {TRAINING_FILE.name} as {training.id} ({training.bytes} bytes)")

    # 2. Start the job.
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=training.id,
        suffix="support-bot",
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    print(f"Created {job.id} on {MODEL}: {job.status}")

    # 3. Follow it: print new events (the API lists them newest first) until the job ends.
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job.id)
        events = client.fine_tuning.jobs.list_events(fine_tuning_job_id=job.id, limit=100).data
        for event in reversed(events):
            if event.id not in seen:
                seen.add(event.id)
                print(f"  {event.message}")
        if job.status in ENDED:
            break
        time.sleep(POLL_S)
    if job.status != "succeeded":
        print(f"The job {job.status}: {job.error.message if job.error else ''}", file=sys.stderr)
        return 1
    print(f"Fine-tuned model: {job.fine_tuned_model} ({job.trained_tokens} trained tokens)")
    for checkpoint in client.fine_tuning.jobs.checkpoints.list(job.id).data:
        print(f"  checkpoint {checkpoint.fine_tuned_model_checkpoint}: loss {checkpoint.metrics.train_loss:.3f}")

    # 4. Talk to it, streaming the reply.
    question = "Where is my order?"
    print(f"User: {question}\nAssistant: ", end="", flush=True)
    stream = client.chat.completions.create(
        model=job.fine_tuned_model,
        messages=[
            {"role": "system", "content": "You are Sam, the support assistant of an online shop."},
            {"role": "user", "content": question},
        ],
        max_completion_tokens=40,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
