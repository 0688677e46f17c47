// Tunewright dashboard: one page, no build step. It calls the same /v1 API as any client, with the key the user
// typed in an Authorization header. The key lives in this tab's session storage only: never in a URL, a cookie or
// local storage. Every text from the API is written with textContent (never as HTML).
"use strict";

(() => {
  const KEY = "tunewright.key";
  const KIND = "tunewright.kind";
  const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
  const STATUSES = ["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"];
  const REFRESH_MS = 5000;
  const EVENTS_SHOWN = 1000; // the newest events listed on a job's page (the charts keep every step)
  const main = document.getElementById("main");

  // --- small helpers -------------------------------------------------------------------------------------------

  /** An element: h("a", {href: "#/"}, "text", child, …); attributes starting with "on" are listeners. */
  function h(tag, attrs, ...children) {
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
      else if (name === "dataset") Object.assign(element.dataset, value);
      else element.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      element.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return element;
  }

  const when = (seconds) => (seconds ? new Date(seconds * 1000).toLocaleString() : "—");
  const count = (value) => (value === undefined || value === null ? "—" : Number(value).toLocaleString());
  const fixed = (value, digits = 4) => (typeof value === "number" ? value.toFixed(digits) : "—");
  const usd = (value) => `$${Number(value || 0).toFixed(2)}`;

  function bytes(value) {
    if (typeof value !== "number") return "—";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let size = value;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) {
      size /= 1024;
      unit += 1;
    }
    return `${unit ? size.toFixed(1) : size} ${units[unit]}`;
  }

  const badge = (status) => h("span", { class: `badge status-${status}` }, status);
  const masked = (key) => (key.length > 12 ? `${key.slice(0, 8)}…${key.slice(-4)}` : "…");

  // --- session and API -----------------------------------------------------------------------------------------

  const session = {
    get key() {
      return window.sessionStorage.getItem(KEY);
    },
    get kind() {
      return window.sessionStorage.getItem(KIND);
    },
    save(key, kind) {
      window.sessionStorage.setItem(KEY, key);
      window.sessionStorage.setItem(KIND, kind);
    },
    clear() {
      window.sessionStorage.removeItem(KEY);
      window.sessionStorage.removeItem(KIND);
    },
  };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  /** Call /v1`path` with the session's key (or `key`); the decoded JSON, or an ApiError with OpenAI's message. */
  async function api(path, { method = "GET", body, signal, key } = {}) {
    const headers = { Authorization: `Bearer ${key || session.key}`, Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(`/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      signal,
      cache: "no-store",
      credentials: "omit",
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = null;
    }
    if (!response.ok) {
      const message = (data && data.error && data.error.message) || `${response.status} ${response.statusText}`;
      if (response.status === 401 && !key) expired(message);
      throw new ApiError(response.status, message);
    }
    return data;
  }

  /** Every item of a cursor-paginated list (`after`/`has_more`), up to `max`. */
  async function listAll(path, { signal, max = 1000 } = {}) {
    const items = [];
    let after = null;
    for (;;) {
      const separator = path.includes("?") ? "&" : "?";
      const page = await api(`${path}${separator}limit=100${after ? `&after=${encodeURIComponent(after)}` : ""}`, {
        signal,
      });
      items.push(...page.data);
      if (!page.has_more || !page.data.length || items.length >= max) return items;
      after = page.data[page.data.length - 1].id;
    }
  }

  /** Every bucket of a usage page (`next_page`). */
  async function buckets(path, signal) {
    const all = [];
    let cursor = null;
    for (;;) {
      const page = await api(cursor ? `${path}&page=${encodeURIComponent(cursor)}` : path, { signal });
      all.push(...page.data);
      if (!page.has_more || !page.next_page) return all;
      cursor = page.next_page;
    }
  }

  /**
   * Which kind of key this is: "project" (reads /v1/models) or "admin" (reads /v1/organization/projects). The
   * prefix picks which to ask first (an organization admin key starts `sk-admin-`); the other is asked on a 403.
   */
  async function keyKind(key) {
    const probes = [
      ["project", "/models"],
      ["admin", "/organization/projects?limit=1"],
    ];
    if (key.startsWith("sk-admin-")) probes.reverse();
    for (const [index, [kind, path]] of probes.entries()) {
      try {
        await api(path, { key });
        return kind;
      } catch (error) {
        if (!(error instanceof ApiError) || error.status !== 403 || index === probes.length - 1) throw error;
      }
    }
    throw new Error("unreachable");
  }

  // --- views and routing ---------------------------------------------------------------------------------------

  let current = null; // the AbortController of the view on screen: aborted (streams, timers) when it goes

  function notice(message, kind = "error") {
    return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, message);
  }

  function expired(message) {
    session.clear();
    route({ message: `Signed out: ${message}` });
  }

  /** Run `task` every `ms` until `signal` aborts. */
  function every(ms, signal, task) {
    const timer = window.setInterval(task, ms);
    signal.addEventListener("abort", () => window.clearInterval(timer));
  }

  function parseHash() {
    const raw = window.location.hash.replace(/^#\/?/, "");
    const [path, query] = raw.split("?");
    return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || "") };
  }

  function route(options = {}) {
    if (current) current.abort();
    current = new AbortController();
    const signal = current.signal;
    const nav = document.getElementById("nav");
    const who = document.getElementById("who");
    main.replaceChildren();
    if (!session.key) {
      nav.hidden = true;
      who.hidden = true;
      signIn(options.message);
      return;
    }
    nav.hidden = false;
    who.hidden = false;
    document.getElementById("who-key").textContent = `${session.kind} key ${masked(session.key)}`;
    for (const link of nav.querySelectorAll("a[data-kind]")) link.hidden = link.dataset.kind !== session.kind;
    const { parts, query } = parseHash();
    const [page, id] = parts;
    const view =
      session.kind === "admin"
        ? () => usageView(query, signal)
        : page === "jobs" && id
          ? () => jobView(id, signal)
          : page === "files"
            ? () => filesView(signal)
            : page === "models"
              ? () => modelsView(signal)
              : () => jobsView(query, signal);
    for (const link of nav.querySelectorAll("a")) {
      link.classList.toggle("active", link.getAttribute("href") === `#/${page || (session.kind === "admin" ? "usage" : "jobs")}`);
    }
    view().catch((error) => {
      if (error.name === "AbortError" || signal.aborted) return;
      main.append(notice(error.message));
    });
  }

  function signIn(message) {
    const input = h("input", {
      id: "api-key",
      type: "password",
      name: "api-key",
      autocomplete: "off",
      spellcheck: "false",
      placeholder: "sk-proj-… or sk-admin-…",
      required: true,
    });
    const status = h("p", { class: "hint", id: "sign-in-status" });
    // method=post: were the script to fail, the browser would never put the key in a URL.
    const form = h(
      "form",
      { class: "card sign-in", method: "post", id: "sign-in" },
      h("h1", {}, "Sign in"),
      h("p", { class: "hint" }, "A project key shows its jobs, files and models; an admin key shows usage per project."),
      h("label", { for: "api-key" }, "API key"),
      input,
      h("button", { type: "submit" }, "Sign in"),
      status,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const key = input.value.trim();
      status.textContent = "Checking the key…";
      try {
        const kind = await keyKind(key);
        session.save(key, kind);
        input.value = "";
        route(); // the page asked for (a job's link, say) once signed in
      } catch (error) {
        status.textContent = error.message;
      }
    });
    main.append(message ? notice(message) : "", form);
    input.focus();
  }

  // --- jobs ------------------------------------------------------------------------------------------------------

  async function jobsView(query, signal) {
    const filter = query.get("status") || "all";
    const filters = h(
      "div",
      { class: "filters", role: "group", "aria-label": "Status" },
      ["all", ...STATUSES].map((status) =>
        h(
          "a",
          {
            href: status === "all" ? "#/jobs" : `#/jobs?status=${status}`,
            class: status === filter ? "chip active" : "chip",
            dataset: { status },
          },
          status.replace("_", " "),
        ),
      ),
    );
    const body = h("tbody", { id: "jobs-body" });
    const more = h("button", { type: "button", hidden: true }, "Load more");
    const summary = h("p", { class: "hint" });
    main.append(
      h("h1", {}, "Fine-tuning jobs"),
      filters,
      h(
        "table",
        { class: "grid", id: "jobs" },
        h("thead", {}, h("tr", {}, ["Job", "Model", "Status", "Fine-tuned model", "Created", "Finished", "Trained tokens"].map((t) => h("th", {}, t)))),
        body,
      ),
      summary,
      more,
    );
    let pages = 1;
    async function load() {
      // The API lists newest first, 100 a page; the status filter applies to the pages loaded.
      const jobs = [];
      let after = null;
      let hasMore = false;
      for (let page = 0; page < pages; page += 1) {
        const result = await api(`/fine_tuning/jobs?limit=100${after ? `&after=${after}` : ""}`, { signal });
        jobs.push(...result.data);
        hasMore = result.has_more;
        if (!hasMore || !result.data.length) break;
        after = result.data[result.data.length - 1].id;
      }
      const shown = filter === "all" ? jobs : jobs.filter((job) => job.status === filter);
      body.replaceChildren(
        ...shown.map((job) =>
          h(
            "tr",
            { dataset: { job: job.id, status: job.status } },
            h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.id)),
            h("td", {}, job.model),
            h("td", {}, badge(job.status)),
            h("td", { class: "mono" }, job.fine_tuned_model || "—"),
            h("td", {}, when(job.created_at)),
            h("td", {}, when(job.finished_at)),
            h("td", { class: "num" }, count(job.trained_tokens)),
          ),
        ),
      );
      summary.textContent = `${shown.length} of ${jobs.length} job${jobs.length === 1 ? "" : "s"} loaded${hasMore ? "; older ones not loaded yet" : ""}.`;
      more.hidden = !hasMore;
    }
    more.addEventListener("click", () => {
      pages += 1;
      load().catch(() => {});
    });
    await load();
    every(REFRESH_MS, signal, () => load().catch(() => {}));
  }

  // --- one job: details, live events, charts, checkpoints ---------------------------------------------------------

  const LOSS_SERIES = [
    ["train_loss", "training loss", "#2563eb"],
    ["valid_loss", "validation loss", "#ea580c"],
    ["full_valid_loss", "full validation loss", "#16a34a"],
    ["probe_loss", "general probe loss (forgetting check)", "#9333ea"],
  ];
  const ACCURACY_SERIES = [
    ["train_mean_token_accuracy", "training accuracy", "#2563eb"],
    ["valid_mean_token_accuracy", "validation accuracy", "#ea580c"],
    ["full_valid_mean_token_accuracy", "full validation accuracy", "#16a34a"],
  ];

  /** The forgetting check's loss on the general probe set and its change from the base model's: `2.5012 (+2.9%)`. */
  function probeLoss(metrics) {
    const probe = metrics.probe_loss;
    const base = metrics.probe_loss_base;
    if (typeof probe !== "number") return "—";
    if (typeof base !== "number" || base <= 0) return fixed(probe);
    const change = ((probe - base) / base) * 100;
    return `${fixed(probe)} (${change >= 0 ? "+" : ""}${change.toFixed(1)}%)`;
  }

  /** A step chart of `series` ([field, label, colour]) over metrics kept by step; draws as points arrive. */
  class MetricsChart {
    constructor(container, title, series) {
      this.container = container;
      this.title = title;
      this.series = series;
      this.chart = null;
      this.container.dataset.points = "0";
    }

    update(byStep) {
      const steps = [...byStep.keys()].sort((a, b) => a - b);
      const data = [steps, ...this.series.map(([field]) => steps.map((step) => byStep.get(step)[field] ?? null))];
      const drawn = data.slice(1).map((values) => values.filter((value) => value !== null).length);
      if (!drawn[0]) return;
      if (!this.chart) this.create(data);
      else this.chart.setData(data);
      // What was drawn, for whoever inspects the page: data-points (the first series), data-points-<field>.
      this.container.dataset.points = String(drawn[0]);
      this.series.forEach(([field], index) => this.container.setAttribute(`data-points-${field.replaceAll("_", "-")}`, drawn[index]));
    }

    create(data) {
      this.container.replaceChildren();
      const width = Math.max(this.container.clientWidth, 320);
      this.chart = new window.uPlot(
        {
          title: this.title,
          width,
          height: 260,
          scales: { x: { time: false } },
          axes: [{ label: "step" }, {}],
          series: [
            { label: "step" },
            ...this.series.map(([, label, stroke], index) => ({
              label,
              stroke,
              width: 2,
              spanGaps: true,
              points: { show: index > 0 ? true : undefined, size: 6, fill: stroke },
            })),
          ],
        },
        data,
        this.container,
      );
    }

    resize() {
      if (this.chart) this.chart.setSize({ width: Math.max(this.container.clientWidth, 320), height: 260 });
    }
  }

  /**
   * Read the job's events as server-sent events (fetch, since EventSource cannot send an Authorization header).
   * Calls `onEvent` for each event, oldest first; returns when the server sends `[DONE]`. A dropped connection
   * reconnects after the last event received.
   */
  async function followEvents(jobId, signal, onEvent, onState) {
    let after = null;
    for (;;) {
      try {
        const query = `stream=true${after ? `&after=${encodeURIComponent(after)}` : ""}`;
        const response = await fetch(`/v1/fine_tuning/jobs/${encodeURIComponent(jobId)}/events?${query}`, {
          headers: { Authorization: `Bearer ${session.key}`, Accept: "text/event-stream" },
          signal,
          cache: "no-store",
          credentials: "omit",
        });
        if (!response.ok) {
          const body = await response.json().catch(() => null);
          throw new ApiError(response.status, (body && body.error && body.error.message) || response.statusText);
        }
        onState("live");
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            const data = frame
              .split("\n")
              .filter((line) => line.startsWith("data:"))
              .map((line) => line.slice(5).trimStart())
              .join("\n");
            if (!data) continue; // a keep-alive comment
            if (data === "[DONE]") {
              onState("done");
              return;
            }
            const event = JSON.parse(data);
            if (event.error) throw new ApiError(500, event.error.message);
            after = event.id;
            onEvent(event);
          }
        }
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status !== 429 && error.status < 500) throw error;
        onState(`reconnecting (${error.message})`);
      }
      await new Promise((resolve) => window.setTimeout(resolve, 1000));
      if (signal.aborted) return;
    }
  }

  async function jobView(jobId, signal) {
    const path = `/fine_tuning/jobs/${encodeURIComponent(jobId)}`;
    const heading = h("h1", {}, jobId);
    const statusLine = h("div", { class: "status-line" });
    const details = h("dl", { class: "details", id: "job-details" });
    const progress = h("p", { class: "hint", id: "job-progress" });
    const lossBox = h("div", { class: "chart", id: "loss-chart" }, h("p", { class: "hint" }, "No metrics yet."));
    const accuracyBox = h("div", { class: "chart", id: "accuracy-chart" }, h("p", { class: "hint" }, "No metrics yet."));
    const checkpointsBody = h("tbody", { id: "checkpoints-body" });
    const eventsList = h("ol", { class: "events", id: "events", reversed: true });
    const streamState = h("span", { class: "hint", id: "stream-state" }, "connecting…");
    main.append(
      h("p", {}, h("a", { href: "#/jobs" }, "← All jobs")),
      heading,
      statusLine,
      details,
      progress,
      h("section", { class: "charts" }, lossBox, accuracyBox),
      h("h2", {}, "Checkpoints"),
      h(
        "table",
        { class: "grid", id: "checkpoints" },
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Step", "Checkpoint model", "Train loss", "Valid loss", "Full valid loss", "Probe loss (vs base)", "Train acc.", "Valid acc.", "Created"].map((t) => h("th", {}, t)),
          ),
        ),
        checkpointsBody,
      ),
      h("h2", {}, "Events ", streamState),
      eventsList,
    );

    const loss = new MetricsChart(lossBox, "Loss", LOSS_SERIES);
    const accuracy = new MetricsChart(accuracyBox, "Mean token accuracy", ACCURACY_SERIES);
    const onResize = () => {
      loss.resize();
      accuracy.resize();
    };
    window.addEventListener("resize", onResize);
    signal.addEventListener("abort", () => window.removeEventListener("resize", onResize));

    async function showJob() {
      const job = await api(path, { signal });
      const hyper = (job.method && job.method[job.method.type] && job.method[job.method.type].hyperparameters) || job.hyperparameters || {};
      const actions = [];
      const act = (label, verb) =>
        h(
          "button",
          {
            type: "button",
            onclick: async (event) => {
              event.target.disabled = true;
              try {
                await api(`${path}/${verb}`, { method: "POST", signal });
              } catch (error) {
                statusLine.append(notice(error.message));
              }
              showJob().catch(() => {});
            },
          },
          label,
        );
      if (job.status === "running") actions.push(act("Pause", "pause"));
      if (job.status === "paused") actions.push(act("Resume", "resume"));
      if (!TERMINAL.has(job.status)) actions.push(act("Cancel", "cancel"));
      statusLine.replaceChildren(h("span", { id: "job-status", dataset: { status: job.status } }, badge(job.status)), ...actions);
      const rows = [
        ["Model", job.model],
        ["Fine-tuned model", job.fine_tuned_model || "—"],
        ["Method", (job.method && job.method.type) || "supervised"],
        ["Epochs", hyper.n_epochs],
        ["Batch size", hyper.batch_size],
        ["Learning rate multiplier", hyper.learning_rate_multiplier],
        ["Training file", job.training_file],
        ["Validation file", job.validation_file || "—"],
        ["Trained tokens", count(job.trained_tokens)],
        ["Created", when(job.created_at)],
        ["Estimated finish", when(job.estimated_finish)],
        ["Finished", when(job.finished_at)],
        ["Result files", (job.result_files || []).join(", ") || "—"],
      ];
      if (job.error && job.error.message) rows.push(["Error", `${job.error.code || ""} ${job.error.message}`.trim()]);
      details.replaceChildren(...rows.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value === undefined ? "—" : String(value))]));
      return job;
    }

    async function showCheckpoints() {
      const page = await api(`${path}/checkpoints?limit=100`, { signal });
      checkpointsBody.replaceChildren(
        ...page.data.map((checkpoint) => {
          const m = checkpoint.metrics || {};
          return h(
            "tr",
            { dataset: { step: checkpoint.step_number } },
            h("td", { class: "num" }, checkpoint.step_number),
            h("td", { class: "mono" }, checkpoint.fine_tuned_model_checkpoint),
            h("td", { class: "num" }, fixed(m.train_loss)),
            h("td", { class: "num" }, fixed(m.valid_loss)),
            h("td", { class: "num" }, fixed(m.full_valid_loss)),
            h("td", { class: "num probe" }, probeLoss(m)),
            h("td", { class: "num" }, fixed(m.train_mean_token_accuracy, 3)),
            h("td", { class: "num" }, fixed(m.valid_mean_token_accuracy ?? m.full_valid_mean_token_accuracy, 3)),
            h("td", {}, when(checkpoint.created_at)),
          );
        }),
      );
      if (!page.data.length) checkpointsBody.append(h("tr", {}, h("td", { colspan: 9, class: "hint" }, "None yet: one is saved at each epoch end.")));
    }

    await showJob();
    await showCheckpoints();

    // Metrics by step (a step replayed after a crash replaces its first report); charts redraw once a frame.
    const byStep = new Map();
    let drawPending = false;
    let refreshPending = null;
    const draw = () => {
      drawPending = false;
      loss.update(byStep);
      accuracy.update(byStep);
    };
    const refreshSoon = () => {
      if (refreshPending) return;
      refreshPending = window.setTimeout(() => {
        refreshPending = null;
        if (signal.aborted) return;
        showJob().catch(() => {});
        showCheckpoints().catch(() => {});
      }, 300);
    };
    const onEvent = (event) => {
      eventsList.prepend(
        h(
          "li",
          { class: `level-${event.level}`, dataset: { type: event.type || "message" } },
          h("time", {}, when(event.created_at)),
          " ",
          event.message,
        ),
      );
      while (eventsList.childElementCount > EVENTS_SHOWN) eventsList.lastElementChild.remove();
      if (event.type === "metrics" && event.data && typeof event.data.step === "number") {
        byStep.set(event.data.step, { ...(byStep.get(event.data.step) || {}), ...event.data });
        progress.textContent = `Step ${event.data.step} of ${event.data.total_steps ?? "?"}`;
        if (!drawPending) {
          drawPending = true;
          window.requestAnimationFrame(draw);
        }
      } else {
        refreshSoon(); // a status change or a new checkpoint
      }
    };
    const onState = (state) => {
      streamState.textContent = state;
      streamState.dataset.state = state;
      if (state === "done") refreshSoon();
    };
    followEvents(jobId, signal, onEvent, onState).catch((error) => {
      if (!signal.aborted) onState(`stopped: ${error.message}`);
    });
  }

  // --- files, models ----------------------------------------------------------------------------------------------

  async function filesView(signal) {
    const files = await listAll("/files?order=desc", { signal });
    main.append(
      h("h1", {}, "Files"),
      h(
        "table",
        { class: "grid", id: "files" },
        h("thead", {}, h("tr", {}, ["File", "Name", "Purpose", "Size", "Status", "Created", "Expires"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          files.map((file) =>
            h(
              "tr",
              { dataset: { file: file.id } },
              h("td", { class: "mono" }, file.id),
              h("td", {}, file.filename),
              h("td", {}, file.purpose),
              h("td", { class: "num" }, bytes(file.bytes)),
              h("td", {}, file.status || "—"),
              h("td", {}, when(file.created_at)),
              h("td", {}, when(file.expires_at)),
            ),
          ),
        ),
      ),
      files.length ? "" : h("p", { class: "hint" }, "No files yet."),
    );
  }

  async function modelsView(signal) {
    const page = await api("/models", { signal });
    const kind = (id) => (id.startsWith("ft:") ? (id.includes(":ckpt-step-") ? "checkpoint" : "fine-tuned") : "base");
    main.append(
      h("h1", {}, "Models"),
      h(
        "table",
        { class: "grid", id: "models" },
        h("thead", {}, h("tr", {}, ["Model", "Kind", "Owned by", "Created"].map((t) => h("th", {}, t)))),
        h(
          "tbody",
          {},
          page.data.map((model) =>
            h(
              "tr",
              { dataset: { model: model.id } },
              h("td", { class: "mono" }, model.id),
              h("td", {}, kind(model.id)),
              h("td", {}, model.owned_by),
              h("td", {}, when(model.created)),
            ),
          ),
        ),
      ),
    );
  }

  // --- usage per project (admin keys) -----------------------------------------------------------------------------

  async function usageView(query, signal) {
    const days = [7, 30].includes(Number(query.get("days"))) ? Number(query.get("days")) : 7;
    const start = Math.floor(Date.now() / 1000) - days * 86400;
    const range = `start_time=${start}&bucket_width=1d&group_by=project_id&limit=31`;
    main.append(
      h("h1", {}, "Usage per project"),
      h(
        "div",
        { class: "filters" },
        [7, 30].map((n) => h("a", { href: `#/usage?days=${n}`, class: n === days ? "chip active" : "chip" }, `last ${n} days`)),
      ),
    );
    const [projects, completions, training, costs] = await Promise.all([
      listAll("/organization/projects?include_archived=true", { signal }),
      buckets(`/organization/usage/completions?${range}`, signal),
      buckets(`/organization/usage/fine_tuning?${range}`, signal),
      buckets(`/organization/costs?start_time=${start}&bucket_width=1d&group_by=project_id&limit=${days + 1}`, signal),
    ]);
    const rows = new Map();
    const row = (id) => {
      if (!rows.has(id)) rows.set(id, { requests: 0, input: 0, output: 0, trained: 0, jobs: 0, cost: 0 });
      return rows.get(id);
    };
    for (const project of projects) row(project.id);
    for (const bucket of completions) {
      for (const r of bucket.results) {
        const target = row(r.project_id);
        target.requests += r.num_model_requests;
        target.input += r.input_tokens;
        target.output += r.output_tokens;
      }
    }
    for (const bucket of training) {
      for (const r of bucket.results) {
        const target = row(r.project_id);
        target.trained += r.trained_tokens;
        target.jobs += r.num_jobs;
      }
    }
    for (const bucket of costs) for (const r of bucket.results) row(r.project_id).cost += r.amount.value;
    const names = new Map(projects.map((project) => [project.id, project.name]));
    const total = { requests: 0, input: 0, output: 0, trained: 0, jobs: 0, cost: 0 };
    for (const values of rows.values()) for (const field of Object.keys(total)) total[field] += values[field];
    const cells = (values) => [
      h("td", { class: "num" }, count(values.requests)),
      h("td", { class: "num" }, count(values.input)),
      h("td", { class: "num" }, count(values.output)),
      h("td", { class: "num" }, count(values.trained)),
      h("td", { class: "num" }, count(values.jobs)),
      h("td", { class: "num" }, usd(values.cost)),
    ];
    main.append(
      h(
        "table",
        { class: "grid", id: "usage" },
        h(
          "thead",
          {},
          h("tr", {}, ["Project", "Requests", "Input tokens", "Output tokens", "Trained tokens", "Jobs trained", "Cost"].map((t) => h("th", {}, t))),
        ),
        h(
          "tbody",
          {},
          [...rows.entries()].map(([id, values]) =>
            h("tr", { dataset: { project: id || "" } }, h("td", {}, names.get(id) || id || "(no project)", h("div", { class: "mono hint" }, id || "")), ...cells(values)),
          ),
        ),
        h("tfoot", {}, h("tr", {}, h("th", {}, "Total"), ...cells(total))),
      ),
      h("p", { class: "hint" }, `Since ${when(start)}. Costs come from the server's configured prices.`),
    );
  }

  // --- start -----------------------------------------------------------------------------------------------------

  document.getElementById("sign-out").addEventListener("click", () => {
    session.clear();
    window.location.hash = "#/";
    route();
  });
  window.addEventListener("hashchange", () => route());
  route();
})();
