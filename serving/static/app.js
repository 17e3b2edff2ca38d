// The web page of qwthn-serve: pick a model version, stream a generation, read its circuits.
//
// Plain JavaScript, no build step and nothing from elsewhere. It uses the public HTTP API only:
// GET /v2, POST /v2/repository/index, GET .../versions/{v} (metadata), GET .../qasm and
// POST .../generate_stream (server-sent events, read with fetch: EventSource cannot POST).
// Server data reaches the page as text (textContent, text nodes), never as HTML.
//
// State for tests and scripts: #status[data-state] is idle | streaming | done | error | stopped,
// #output[data-tokens] counts the token events received, #circuits-panel[data-state] is
// loading | ready for the model version in its data-model ("name/version").

"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const el = {
    serverName: $("server-name"),
    serverVersion: $("server-version"),
    form: $("generate-form"),
    model: $("model"),
    modelNote: $("model-note"),
    prompt: $("prompt"),
    maxNewTokens: $("max-new-tokens"),
    doSample: $("do-sample"),
    sampling: $("sampling"),
    temperature: $("temperature"),
    topP: $("top-p"),
    seed: $("seed"),
    generate: $("generate"),
    stop: $("stop"),
    status: $("status"),
    error: $("error"),
    output: $("output"),
    statPromptTokens: $("stat-prompt-tokens"),
    statTokens: $("stat-tokens"),
    statTtft: $("stat-ttft"),
    statRate: $("stat-rate"),
    statFinish: $("stat-finish"),
    circuits: $("circuits-panel"),
    circuitsModel: $("circuits-model"),
    circuitsError: $("circuits-error"),
    adapterConfig: $("adapter-config"),
    adaptedCount: $("adapted-count"),
    adaptedLayers: $("adapted-layers"),
    kernels: $("kernels"),
    layerField: $("layer-field"),
    layer: $("layer"),
    qasmInfo: $("qasm-info"),
    qasmError: $("qasm-error"),
    qasm: $("qasm"),
  };

  let models = []; // the repository index: {name, version, state, generation}
  let running = null; // the generation in progress: {controller, stopped}
  let circuitsRequest = 0; // bumped per model choice: answers for an earlier choice are dropped
  let programs = null; // the /qasm answer of the model version shown, or null

  // HTTP.

  /** An error the server answered ({"error": message}), or a client-side one to show as is. */
  class ShownError extends Error {}

  async function errorMessage(response) {
    const text = await response.text().catch(() => "");
    try {
      const body = JSON.parse(text);
      if (body && typeof body.error === "string") return body.error;
    } catch (_) {
      // not JSON: a proxy's page, say
    }
    const status = `HTTP ${response.status} ${response.statusText}`.trim();
    return text ? `${status}: ${text.slice(0, 300)}` : status;
  }

  async function request(path, options = {}) {
    let response;
    try {
      response = await fetch(path, options);
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ShownError(`cannot reach the server (${e.message})`);
    }
    if (!response.ok) throw new ShownError(await errorMessage(response));
    return response;
  }

  async function getJSON(path, options = {}) {
    const response = await request(path, { headers: { Accept: "application/json" }, ...options });
    return response.json();
  }

  const versionPath = (m) =>
    `/v2/models/${encodeURIComponent(m.name)}/versions/${encodeURIComponent(m.version)}`;
  const label = (m) => `${m.name} — version ${m.version}`;

  /**
   * The events of a server-sent event stream, {type, data}, as the HTML standard parses them:
   * lines end with \n, \r\n or \r, an event ends with a blank line, and a chunk may end anywhere
   * (inside a line, a UTF-8 character, or between the \r and \n of a line end).
   */
  async function* serverSentEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    const lineEnd = /\r\n|\r|\n/g;
    let buffer = "";
    let type = "";
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        buffer += done ? decoder.decode() : decoder.decode(value, { stream: true });
        let start = 0;
        lineEnd.lastIndex = 0;
        for (let match; (match = lineEnd.exec(buffer)) !== null; ) {
          if (match[0] === "\r" && lineEnd.lastIndex === buffer.length && !done) break;
          const line = buffer.slice(start, match.index);
          start = lineEnd.lastIndex;
          if (line === "") {
            if (data.length > 0) yield { type: type || "message", data: data.join("\n") };
            type = "";
            data = [];
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text.startsWith(" ")) text = text.slice(1);
            if (field === "event") type = text;
            else if (field === "data") data.push(text);
          }
        }
        buffer = buffer.slice(start);
        if (done) return; // an unfinished event is dropped, as the standard says
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // Controls.

  const selectedModel = () => models[Number(el.model.value)] ?? null;

  /** Why the model version cannot generate now, or null. */
  function generationProblem(m) {
    if (!m) return "No model version to generate with.";
    if (m.state !== "READY") {
      return `${label(m)} is not ready (${m.state}): it cannot take requests now.`;
    }
    if (!m.generation) {
      return (
        `${label(m)} does not generate text: its export has no tokenizer, or it is not a ` +
        "causal LM with a KV cache. Its circuits are still shown."
      );
    }
    return null;
  }

  function updateControls() {
    const problem = generationProblem(selectedModel());
    el.generate.disabled = running !== null || problem !== null;
    el.stop.disabled = running === null;
    el.modelNote.textContent = problem ?? "";
    el.modelNote.hidden = problem === null || models.length === 0;
    el.sampling.disabled = !el.doSample.checked;
  }

  function setStatus(state, text) {
    el.status.dataset.state = state;
    el.status.textContent = text;
  }

  function showError(box, message) {
    box.textContent = message;
    box.hidden = !message;
  }

  function number(input, name, integer) {
    const text = input.value.trim();
    const value = Number(text);
    if (text === "" || !Number.isFinite(value) || (integer && !Number.isInteger(value))) {
      throw new ShownError(`${name} must be ${integer ? "a whole number" : "a number"}.`);
    }
    return value;
  }

  /** The GenerateRequest of the form. Ranges are the server's to check: it says what is wrong. */
  function generateRequest() {
    const body = {
      prompt: el.prompt.value,
      max_new_tokens: number(el.maxNewTokens, "Max new tokens", true),
    };
    if (el.doSample.checked) {
      body.do_sample = true;
      body.temperature = number(el.temperature, "Temperature", false);
      body.top_p = number(el.topP, "Top-p", false);
      if (el.seed.value.trim() !== "") body.seed = number(el.seed, "Seed", true);
    }
    return body;
  }

  // Generation.

  const formatSeconds = (ms) => (ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`);

  function resetOutput() {
    el.output.textContent = "";
    el.output.dataset.tokens = "0";
    const stats = [el.statPromptTokens, el.statTokens, el.statTtft, el.statRate, el.statFinish];
    for (const stat of stats) stat.textContent = "–";
    showError(el.error, "");
  }

  function appendText(text) {
    const out = el.output;
    const atEnd = out.scrollTop + out.clientHeight >= out.scrollHeight - 4;
    out.appendChild(document.createTextNode(text));
    if (atEnd) out.scrollTop = out.scrollHeight;
  }

  async function generate() {
    const m = selectedModel();
    if (running !== null || generationProblem(m) !== null) return;
    resetOutput();
    let body;
    try {
      body = generateRequest();
    } catch (e) {
      showError(el.error, e.message);
      setStatus("error", "Error");
      return;
    }
    const run = { controller: new AbortController(), stopped: false };
    running = run;
    setStatus("streaming", `Streaming from ${label(m)}…`);
    updateControls();

    const started = performance.now();
    let firstAt = null;
    let tokens = 0;
    const tokenSeen = () => {
      const now = performance.now();
      tokens += 1;
      el.output.dataset.tokens = String(tokens);
      el.statTokens.textContent = String(tokens);
      if (firstAt === null) {
        firstAt = now;
        el.statTtft.textContent = formatSeconds(now - started);
      } else if (now > firstAt) {
        el.statRate.textContent = ((tokens - 1) / ((now - firstAt) / 1000)).toFixed(1);
      }
    };

    try {
      const response = await request(`${versionPath(m)}/generate_stream`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: run.controller.signal,
      });
      let answer = null;
      let finished = false;
      for await (const event of serverSentEvents(response.body)) {
        if (run.stopped) break; // events that came with the last chunk read are not shown
        if (event.type === "error") {
          let message = event.data;
          try {
            message = JSON.parse(event.data).error ?? message;
          } catch (_) {
            // not JSON: show the data as it came
          }
          throw new ShownError(message);
        }
        if (event.data === "[DONE]") {
          finished = true;
          break;
        }
        const data = JSON.parse(event.data);
        if ("token_id" in data) {
          if (data.text) appendText(data.text);
          tokenSeen();
        } else {
          answer = data;
        }
      }
      if (run.stopped) throw new DOMException("stopped by the user", "AbortError");
      if (!finished || answer === null) {
        throw new ShownError("the stream ended before the generation did (did the server stop?)");
      }
      el.statPromptTokens.textContent = String(answer.prompt_tokens);
      el.statTokens.textContent = String(answer.completion_tokens);
      el.statFinish.textContent = answer.finish_reason;
      setStatus("done", `Done: ${answer.finish_reason}`);
    } catch (e) {
      if (run.stopped) {
        setStatus("stopped", "Stopped");
      } else {
        let message;
        if (e instanceof ShownError) {
          message = e.message;
        } else if (e instanceof TypeError && /network|fetch/i.test(e.message)) {
          message = `the connection to the server broke off (${e.message})`; // mid-stream
        } else {
          message = `the page failed: ${e.name}: ${e.message}`;
        }
        showError(el.error, message);
        setStatus("error", "Error");
      }
    } finally {
      running = null;
      updateControls();
    }
  }

  function stop() {
    if (running === null) return;
    running.stopped = true;
    running.controller.abort(); // the connection closes: the server stops generating
  }

  // Circuits.

  function describe(value) {
    if (value === null || value === undefined) return "none";
    if (Array.isArray(value)) return value.length ? value.map(describe).join(", ") : "none";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function addTerm(list, term, value) {
    const row = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = term;
    dd.textContent = describe(value);
    row.append(dt, dd);
    list.appendChild(row);
  }

  function showAdapters(qwthn) {
    const config = qwthn.adapter_config ?? {};
    const first = ["adapter_type", "n_qubits", "n_layers", "ansatz", "rank"];
    const keys = [
      ...first.filter((k) => k in config),
      ...Object.keys(config).filter((k) => !first.includes(k)),
    ];
    for (const key of keys) addTerm(el.adapterConfig, key, config[key]);

    const layers = qwthn.adapted_layers ?? [];
    el.adaptedCount.textContent = `(${layers.length})`;
    for (const layer of layers) {
      const item = document.createElement("li");
      const name = document.createElement("code");
      name.textContent = layer;
      item.appendChild(name);
      const circuit = (qwthn.circuits ?? {})[layer];
      if (circuit) {
        const facts = document.createElement("span");
        facts.className = "muted";
        const parts = [`${circuit.n_qubits} qubits`];
        if (Array.isArray(circuit.gates)) parts.push(`${circuit.gates.length} gates`);
        if (circuit.n_weights !== undefined) parts.push(`${circuit.n_weights} weights`);
        if (Array.isArray(circuit.observables)) {
          parts.push(`observables ${circuit.observables.join(" ")}`);
        }
        facts.textContent = parts.join(" · ");
        item.append(" ", facts);
      }
      el.adaptedLayers.appendChild(item);
    }
    el.kernels.textContent = `Custom-op kernels: ${qwthn.kernels ? "on" : "off"}.`;
  }

  function showProgram() {
    const entry = programs?.layers?.[el.layer.value];
    if (!entry) {
      el.qasm.hidden = true;
      el.qasmInfo.textContent = "";
      return;
    }
    const parts = [`${entry.n_qubits} qubits`, `inputs ${describe(entry.inputs)}`];
    parts.push(`observables ${describe(entry.observables)}`);
    parts.push(entry.weights ? "weights as inputs" : "weights bound to literals");
    if (programs.reading) parts.push(`reading: ${programs.reading}`);
    el.qasmInfo.textContent = `${entry.file}: ${parts.join("; ")}`;
    el.qasm.textContent = entry.program;
    el.qasm.hidden = false;
  }

  async function showCircuits(m) {
    const ticket = ++circuitsRequest;
    programs = null;
    el.circuits.dataset.state = "loading";
    el.circuits.dataset.model = m ? `${m.name}/${m.version}` : "";
    el.circuitsModel.textContent = m ? `(${label(m)})` : "";
    for (const node of [el.adapterConfig, el.adaptedLayers, el.layer]) node.replaceChildren();
    for (const node of [el.adaptedCount, el.kernels, el.qasm, el.qasmInfo]) node.textContent = "";
    showError(el.circuitsError, "");
    showError(el.qasmError, "");
    el.layer.disabled = true;
    el.layerField.hidden = true;
    el.qasm.hidden = true;
    if (!m) return;

    el.qasmInfo.textContent = "Loading…";
    const [meta, qasm] = await Promise.allSettled([
      getJSON(versionPath(m)),
      getJSON(`${versionPath(m)}/qasm`),
    ]);
    if (ticket !== circuitsRequest) return; // another version was picked meanwhile
    el.qasmInfo.textContent = "";
    if (meta.status === "fulfilled") {
      showAdapters(meta.value.qwthn ?? {});
    } else {
      showError(el.circuitsError, `Metadata: ${meta.reason.message}`);
    }
    if (qasm.status === "fulfilled") {
      programs = qasm.value;
      for (const layer of Object.keys(programs.layers ?? {})) {
        el.layer.appendChild(new Option(layer, layer));
      }
      el.layer.disabled = el.layer.options.length === 0;
      el.layerField.hidden = el.layer.disabled;
      showProgram();
    } else {
      showError(el.qasmError, qasm.reason.message);
    }
    el.circuits.dataset.state = "ready";
  }

  // Start.

  async function loadServer() {
    try {
      const meta = await getJSON("/v2");
      el.serverName.textContent = meta.name;
      el.serverVersion.textContent = `version ${meta.version}`;
      document.title = `${meta.name} ${meta.version}`;
    } catch (e) {
      showError(el.error, `Server metadata: ${e.message}`);
    }
  }

  async function loadModels() {
    try {
      models = await getJSON("/v2/repository/index", { method: "POST" });
    } catch (e) {
      models = [];
      showError(el.error, `Model list: ${e.message}`);
    }
    el.model.replaceChildren();
    models.forEach((m, i) => {
      let text = label(m);
      if (m.state !== "READY") text += " (not ready)";
      else if (!m.generation) text += " (no generation)";
      el.model.appendChild(new Option(text, String(i)));
    });
    if (models.length === 0) el.model.appendChild(new Option("No models", ""));
    const usable = models.findIndex((m) => generationProblem(m) === null);
    el.model.value = String(Math.max(usable, 0));
    el.model.disabled = models.length === 0;
    updateControls();
    showCircuits(selectedModel());
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  el.stop.addEventListener("click", stop);
  el.doSample.addEventListener("change", updateControls);
  el.layer.addEventListener("change", showProgram);
  el.model.addEventListener("change", () => {
    updateControls();
    showCircuits(selectedModel());
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      generate();
    }
  });

  updateControls();
  loadServer();
  loadModels();
})();
