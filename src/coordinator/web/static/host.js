// The browser Island of /host: one Phoenix socket, the `island:<id>` channel, and jobs run in this tab.
// Payloads are the Island protocol's NATS payloads (RegisterHost, EnhancedHeartbeat, JobStatus,
// JobOutput, LeaseRenewal) pushed as channel events; `assign_job` and `cancel_job` arrive as pushes.
// WASM Cargos run with the browser's WebAssembly in a worker (/static/wasi-worker.js); chat jobs with
// a small bigram text generator. No build step: plain script, the vendored phoenix client as `Phoenix`.
"use strict";

(() => {
  const root = document.getElementById("host");
  if (!root || typeof Phoenix === "undefined") return;
  const AGENT_VERSION = "browser-island/0.1.0";
  const RUNTIMES = ["wasm", "container"];
  const WASM_TIMEOUT_MS = 60000;
  const LEASE_MS = 30000;
  const TOKEN_DELAY_MS = 40;
  const CLOSE_REVOKED = 4003; // the socket close code of a revoked device token
  const heartbeatMs = Math.max(1, Number(root.dataset.heartbeatSeconds || 5)) * 1000;
  const storageKey = `archipelag.host.${root.dataset.userId}`;
  const el = (id) => document.getElementById(id);
  const jobs = new Map(); // job_id -> {cancel: () => void}
  const modules = new Map(); // wasm url + hash -> Promise<WebAssembly.Module>
  const warm = new Map(); // workload_id -> last use (ms)
  const counts = { done: 0, failed: 0 };
  let credential = null;
  let socket = null;
  let channel = null;
  let heartbeatTimer = null;
  let rttMs = null;
  let lastRate = null;

  // ------------------------------------------------------------------ the page

  function setStatus(text) {
    const node = el("host-status");
    node.textContent = text;
    node.className = `status status-${text.replace(/[^a-z_]/g, "_")}`;
  }

  function log(text) {
    const item = document.createElement("li");
    item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    const list = el("host-log");
    list.prepend(item);
    while (list.children.length > 50) list.lastChild.remove();
  }

  function showWork() {
    el("jobs-done").textContent = String(counts.done);
    el("jobs-failed").textContent = String(counts.failed);
    el("tokens-per-second").textContent = lastRate === null ? "—" : lastRate.toFixed(1);
    el("host-job").textContent = jobs.size ? [...jobs.keys()].map((id) => id.slice(0, 8)).join(", ") : "none";
    if (channel && channel.state === "joined" && el("host-status").textContent !== "revoked") {
      setStatus(jobs.size ? "processing" : "ready");
    }
  }

  async function refreshStats() {
    if (!credential) return;
    try {
      const answer = await fetch(`/host/stats?host_id=${encodeURIComponent(credential.host_id)}`, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      });
      if (!answer.ok) return;
      const stats = await answer.json();
      el("karma").textContent = String(stats.karma);
      el("earnings").textContent = stats.earnings;
      el("approval").textContent = stats.approved ? `approved (${stats.status})` : "awaiting an operator's approval";
    } catch (_) {
      /* offline for a moment: the next refresh tries again */
    }
  }

  // ------------------------------------------------------------------ credential and socket

  async function newCredential() {
    const answer = await fetch("/host/device", {
      method: "POST",
      credentials: "same-origin",
      headers: { "X-CSRF-Token": root.dataset.csrf, Accept: "application/json" },
    });
    if (!answer.ok) throw new Error(`could not create a browser Island (HTTP ${answer.status})`);
    const issued = await answer.json();
    localStorage.setItem(storageKey, JSON.stringify(issued));
    log(`paired a new browser Island ${issued.host_id.slice(0, 8)} to your account`);
    return issued;
  }

  function storedCredential() {
    try {
      const value = JSON.parse(localStorage.getItem(storageKey) || "null");
      return value && value.host_id && value.device_token ? value : null;
    } catch (_) {
      return null;
    }
  }

  async function start(forceNew) {
    setStatus("initialising");
    let reused = false;
    credential = forceNew ? null : storedCredential();
    if (credential) reused = true;
    else credential = await newCredential();
    el("host-id").textContent = credential.host_id;
    connect(reused);
  }

  function restartWithNewCredential(why) {
    log(`${why}: pairing a new browser Island`);
    localStorage.removeItem(storageKey);
    if (socket) socket.disconnect();
    socket = null;
    channel = null;
    start(true).catch((e) => fail(e));
  }

  function connect(reused) {
    let opened = false;
    socket = new Phoenix.Socket("/socket", {
      params: { token: credential.device_token },
      heartbeatIntervalMs: 20000,
      reconnectAfterMs: (tries) => [1000, 2000, 5000][tries - 1] || 10000,
    });
    const mine = socket;
    socket.onOpen(() => {
      opened = true;
      el("host-network").textContent = "connected";
    });
    socket.onError(() => {
      el("host-network").textContent = "connection lost, retrying";
      // Refused before it ever opened: the stored device token is revoked or expired.
      if (!opened && reused && mine === socket) restartWithNewCredential("the stored device token was refused");
    });
    socket.onClose((event) => {
      if (mine !== socket) return;
      if (event && event.code === CLOSE_REVOKED) {
        // The owner revoked this device in settings: stop here (pairing anew would undo the revoke).
        socket.disconnect();
        clearInterval(heartbeatTimer);
        localStorage.removeItem(storageKey);
        for (const running of jobs.values()) running.cancel();
        setStatus("revoked");
        el("host-network").textContent = "disconnected: this device was revoked; reload to pair a new one";
        log("device token revoked");
        return;
      }
      if (opened) setStatus("reconnecting");
    });
    socket.connect();
    channel = socket.channel(`island:${credential.host_id}`, {});
    channel.on("assign_job", (job) => runJob(job));
    channel.on("cancel_job", (msg) => {
      const running = jobs.get(msg.job_id);
      if (running) running.cancel();
    });
    channel
      .join()
      .receive("ok", () => onJoined())
      .receive("error", (reply) => {
        if (reply && reply.reason === "forbidden") restartWithNewCredential("this Island's token was refused");
        else log(`join refused: ${JSON.stringify(reply)}`);
      });
  }

  async function onJoined() {
    log(`joined island:${credential.host_id.slice(0, 8)}`);
    try {
      await push("register", registerMessage());
      await beat();
    } catch (e) {
      log(`registration failed: ${e.message}`);
    }
    clearInterval(heartbeatTimer);
    heartbeatTimer = setInterval(() => beat().catch((e) => log(`heartbeat failed: ${e.message}`)), heartbeatMs);
    showWork();
    refreshStats();
  }

  function push(event, payload) {
    return new Promise((resolve, reject) => {
      channel
        .push(event, payload, 10000)
        .receive("ok", resolve)
        .receive("error", (reply) => reject(new Error(`${event} refused: ${JSON.stringify(reply)}`)))
        .receive("timeout", () => reject(new Error(`${event}: no answer`)));
    });
  }

  // ------------------------------------------------------------------ Island messages

  const ramMb = () => Math.round((navigator.deviceMemory || 4) * 1024);

  function registerMessage() {
    return {
      host_id: credential.host_id,
      capabilities: {
        gpu_model: null,
        gpu_vram_mb: null,
        cpu_cores: navigator.hardwareConcurrency || 2,
        ram_mb: ramMb(),
        region: null,
      },
      version: AGENT_VERSION,
    };
  }

  async function beat() {
    if (typeof socket.ping === "function") {
      await new Promise((resolve) => {
        if (!socket.ping((ms) => { rttMs = ms; resolve(); })) resolve();
      });
    }
    const recent = [...warm.entries()].filter(([, at]) => Date.now() - at < 600000).map(([id]) => id);
    await push("heartbeat", {
      host_id: credential.host_id,
      status: "online",
      active_jobs: jobs.size,
      timestamp: Date.now(),
      agent_version: AGENT_VERSION,
      system: { cpu_percent: jobs.size ? 50 : 2, memory_used_mb: 0, memory_total_mb: ramMb(), disk_used_gb: 0, disk_total_gb: 0 },
      cache: { cached_image_count: 0, cached_size_mb: 0, warm_workload_count: recent.length, warm_workload_ids: recent },
      performance_estimates: {
        gpu_bandwidth_gb_s: null,
        estimated_llm_tok_s: lastRate,
        max_concurrent_containers: 2,
        wasm_memory_limit_mb: 256,
        supported_runtimes: RUNTIMES,
        nats_rtt_ms: rttMs,
      },
      asking_prices: { _default: "0.1" },
    });
  }

  const status = (jobId, state, error) =>
    push("status", error ? { job_id: jobId, state, timestamp: Date.now(), error } : { job_id: jobId, state, timestamp: Date.now() });

  class JobFailed extends Error {}
  class Cancelled extends Error {}

  // The input as a Cargo reads it: compact JSON, keys sorted (the Island's re-serialisation).
  function canonical(value) {
    if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
    if (value && typeof value === "object") {
      return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
    }
    return JSON.stringify(value === undefined ? null : value);
  }

  async function runJob(job) {
    if (jobs.has(job.job_id)) return; // re-sent after a re-join: already running here
    const control = { cancelled: false, cancel: () => {} };
    control.cancel = () => { control.cancelled = true; if (control.abort) control.abort(); };
    jobs.set(job.job_id, control);
    showWork();
    log(`job ${job.job_id.slice(0, 8)} assigned (${job.runtime_type})`);
    const lease = setInterval(() => push("lease", { job_id: job.job_id, extend_seconds: 60 }).catch(() => {}), LEASE_MS);
    let seq = 0;
    const output = (chunk, isFinal) => push("output", { job_id: job.job_id, seq: ++seq, chunk, is_final: isFinal });
    try {
      await status(job.job_id, "started");
      const started = performance.now();
      let tokens;
      if (job.runtime_type === "wasm") tokens = await runWasm(job, control, output);
      else if (/llm|chat/i.test(job.container_image || "")) tokens = await generate(job, control, output);
      else throw new JobFailed("This browser Island runs WASM and chat Cargos only: containers need a Docker Island.");
      const seconds = (performance.now() - started) / 1000;
      if (tokens > 0 && seconds > 0) lastRate = tokens / seconds;
      await status(job.job_id, "succeeded");
      if (job.workload_id) warm.set(String(job.workload_id), Date.now());
      counts.done += 1;
      log(`job ${job.job_id.slice(0, 8)} succeeded (${tokens} tokens in ${seconds.toFixed(2)} s)`);
    } catch (e) {
      if (e instanceof Cancelled || control.cancelled) {
        await status(job.job_id, "cancelled").catch(() => {});
        log(`job ${job.job_id.slice(0, 8)} cancelled`);
      } else {
        counts.failed += 1;
        await status(job.job_id, "failed", e.message || String(e)).catch(() => {});
        log(`job ${job.job_id.slice(0, 8)} failed: ${e.message || e}`);
      }
    } finally {
      clearInterval(lease);
      jobs.delete(job.job_id);
      showWork();
      refreshStats();
    }
  }

  // ------------------------------------------------------------------ WASM Cargos

  async function sha256Hex(bytes) {
    const digest = await crypto.subtle.digest("SHA-256", bytes);
    return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  function loadModule(url, hash) {
    const key = `${url}#${hash || ""}`;
    if (!modules.has(key)) {
      const loading = (async () => {
        const answer = await fetch(url, { credentials: "omit" });
        if (!answer.ok) throw new JobFailed(`Failed to fetch WASM module: HTTP ${answer.status}`);
        const bytes = await answer.arrayBuffer();
        if (hash) {
          if (!crypto.subtle) throw new JobFailed("Cannot check the WASM hash outside a secure context");
          const want = hash.toLowerCase().replace(/^sha256:/, "");
          if ((await sha256Hex(bytes)) !== want) throw new JobFailed("WASM module hash mismatch");
        }
        return WebAssembly.compile(bytes);
      })();
      loading.catch(() => modules.delete(key));
      modules.set(key, loading);
    }
    return modules.get(key);
  }

  function execute(module, stdin, control) {
    return new Promise((resolve, reject) => {
      const worker = new Worker("/static/wasi-worker.js");
      const timer = setTimeout(() => {
        worker.terminate();
        reject(new JobFailed(`Timeout: job exceeded ${WASM_TIMEOUT_MS / 1000}s limit`));
      }, WASM_TIMEOUT_MS);
      control.abort = () => {
        clearTimeout(timer);
        worker.terminate();
        reject(new Cancelled());
      };
      worker.onmessage = (event) => {
        clearTimeout(timer);
        worker.terminate();
        resolve(event.data);
      };
      worker.onerror = (event) => {
        clearTimeout(timer);
        worker.terminate();
        reject(new JobFailed(event.message || "WASM worker failed"));
      };
      worker.postMessage({ module, stdin });
    });
  }

  async function runWasm(job, control, output) {
    if (!job.wasm_url) throw new JobFailed("WASM workload missing wasm_url");
    const module = await loadModule(new URL(job.wasm_url, location.origin).href, job.wasm_hash);
    if (control.cancelled) throw new Cancelled();
    const result = await execute(module, canonical(job.input), control);
    // The Cargo JSON-lines protocol, as the Island replays a WASM run's stdout after it exits.
    let streaming = false;
    let tokens = 0;
    let finished = false;
    for (const raw of result.stdout.split("\n")) {
      let msg;
      try { msg = JSON.parse(raw.trim()); } catch (_) { continue; }
      if (!msg || typeof msg !== "object") continue;
      if (msg.type === "status" && typeof msg.message === "string" && !streaming) {
        streaming = true;
        await status(job.job_id, "streaming");
      } else if (msg.type === "token" && typeof msg.content === "string") {
        tokens += 1;
        await output(msg.content, false);
      } else if (msg.type === "done" && !finished) {
        finished = true;
        await output("", true);
      } else if (msg.type === "error") {
        log(`cargo: ${msg.message}`);
      }
    }
    if (result.code !== 0) throw new JobFailed(`Exit code: ${result.code}`);
    return tokens;
  }

  // ------------------------------------------------------------------ the in-browser text generator

  const CORPUS = (
    "the islands of the archipelago share their spare machines and the network routes each job to an " +
    "island that can run it well . a browser island runs small cargos in the tab while its owner reads " +
    "the page . every job is paid in credits and every island earns karma for the work it completes on " +
    "time . the coordinator keeps the ledger and the market sets the price of each cargo by supply and " +
    "demand . small models answer short questions quickly and larger models run on islands with a gpu ."
  ).split(" ");
  const FOLLOWERS = new Map();
  CORPUS.forEach((word, i) => {
    const next = CORPUS[(i + 1) % CORPUS.length];
    if (!FOLLOWERS.has(word)) FOLLOWERS.set(word, []);
    FOLLOWERS.get(word).push(next);
  });

  function seeded(text) {
    let h = 2166136261;
    for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 16777619);
    return () => {
      h = (h + 0x6d2b79f5) | 0;
      let t = Math.imul(h ^ (h >>> 15), 1 | h);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
  }

  function promptOf(input) {
    if (!input || typeof input !== "object") return "";
    if (typeof input.prompt === "string") return input.prompt;
    const messages = Array.isArray(input.messages) ? input.messages : [];
    const last = messages[messages.length - 1];
    return last && typeof last.content === "string" ? last.content : "";
  }

  async function generate(job, control, output) {
    const input = job.input && typeof job.input === "object" ? job.input : {};
    const limit = Number.isInteger(input.max_tokens) ? Math.max(1, Math.min(input.max_tokens, 256)) : 40;
    const random = seeded(promptOf(input));
    await status(job.job_id, "streaming");
    let word = "the";
    for (let i = 0; i < limit; i++) {
      if (control.cancelled) throw new Cancelled();
      await new Promise((resolve) => setTimeout(resolve, TOKEN_DELAY_MS));
      const text = i === 0 ? word[0].toUpperCase() + word.slice(1) : word === "." ? "." : ` ${word}`;
      await output(text, false);
      const options = FOLLOWERS.get(word) || CORPUS;
      word = options[Math.floor(random() * options.length)];
    }
    if (control.cancelled) throw new Cancelled();
    await output("", true);
    return limit;
  }

  function fail(e) {
    setStatus("failed");
    log(e && e.message ? e.message : String(e));
  }

  setInterval(refreshStats, 3000);
  start(false).catch((e) => fail(e));
})();
