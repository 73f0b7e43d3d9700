// resnets serve: the page. Plain JS, no dependencies; talks to /v1/predict, /v1/explain and /v1/model.
"use strict";

(() => {
  const KEY_STORE = "resnets.apiKey";
  const TOPK = 5;

  const $ = (id) => document.getElementById(id);
  const els = {
    file: $("file"),
    dropzone: $("dropzone"),
    error: $("error"),
    status: $("status"),
    figure: $("figure"),
    preview: $("preview"),
    gradcam: $("gradcam"),
    caption: $("caption"),
    toggle: $("gradcam-toggle"),
    top5: $("top5"),
    top5Empty: $("top5-empty"),
    card: $("model-card"),
    cardLoading: $("model-loading"),
    cardFields: $("model-fields"),
    auth: $("auth"),
    apiKey: $("api-key"),
  };

  const state = {
    file: null, // the File being shown
    previewUrl: null,
    previewBroken: false, // the browser cannot show the chosen file (the server may still read it)
    gradcamUrl: null, // object URL of the fetched Grad-CAM PNG for state.file
    gradcamInfo: "",
    predictAbort: null,
    explainAbort: null,
    generation: 0, // bumps on every new file so late answers for an old one are dropped
    modelLoaded: false,
  };

  /** An error whose message is meant for the user as is. */
  class ShownError extends Error {}

  /** Thrown when the API answers 401: the key form is shown and the action is retried after it. */
  class NeedsKey extends Error {}

  // ---------- API ----------

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORE);
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  /** The API's error text: FastAPI's {"detail": "..."} or a validation list, else the HTTP status. */
  async function errorText(response) {
    let detail = null;
    try {
      const body = await response.clone().json();
      detail = body && body.detail !== undefined ? body.detail : null;
    } catch {
      detail = null;
    }
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail) && detail.length) {
      return detail.map((d) => (d && d.msg ? d.msg : JSON.stringify(d))).join("; ");
    }
    if (detail && typeof detail === "object") return JSON.stringify(detail);
    return `The server answered ${response.status} ${response.statusText || ""}`.trim() + ".";
  }

  async function api(path, options = {}) {
    const sentKey = sessionStorage.getItem(KEY_STORE);
    let response;
    try {
      response = await fetch(path, {
        ...options,
        headers: { Accept: "application/json, image/png", ...authHeaders(), ...(options.headers || {}) },
      });
    } catch (err) {
      if (err && err.name === "AbortError") throw err;
      throw new ShownError("Could not reach the server. Check that it is running and try again.");
    }
    if (response.status === 401) {
      if (sentKey && sessionStorage.getItem(KEY_STORE) === sentKey) sessionStorage.removeItem(KEY_STORE);
      showKeyForm(sentKey ? "That API key was not accepted. Enter another one." : null);
      throw new NeedsKey(await errorText(response));
    }
    if (!response.ok) throw new ShownError(await errorText(response));
    return response;
  }

  function fileForm(file) {
    const form = new FormData();
    form.append("file", file, file.name || "image");
    return form;
  }

  // ---------- messages ----------

  function showError(message) {
    els.error.textContent = message;
    els.error.hidden = false;
  }

  function clearError() {
    els.error.textContent = "";
    els.error.hidden = true;
  }

  function setStatus(message) {
    els.status.textContent = message;
  }

  function report(err) {
    if (err && err.name === "AbortError") return;
    if (err instanceof NeedsKey) {
      setStatus("");
      return;
    }
    setStatus("");
    showError(err instanceof ShownError ? err.message : `Something went wrong: ${err && err.message ? err.message : err}`);
    if (!(err instanceof ShownError)) console.error(err);
  }

  // ---------- API key ----------

  /** Ask for the API key (once per refusal: a second 401 while the form is open leaves what is typed). */
  function showKeyForm(note) {
    $("auth-help").textContent = note || "This server needs an API key. It is kept for this browser tab only.";
    if (!els.auth.hidden) return;
    els.auth.hidden = false;
    els.apiKey.value = "";
    els.apiKey.focus();
  }

  els.auth.addEventListener("submit", (event) => {
    event.preventDefault();
    const key = els.apiKey.value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORE, key);
    els.auth.hidden = true;
    clearError();
    if (!state.modelLoaded) loadModel();
    if (state.file) analyse(state.file, { keepPreview: true });
    els.file.focus();
  });

  // ---------- model card ----------

  function formatCount(n) {
    if (typeof n !== "number" || !Number.isFinite(n)) return String(n ?? "—");
    const exact = n.toLocaleString("en-US");
    if (n >= 1e9) return `${exact} (${(n / 1e9).toFixed(2)} B)`;
    if (n >= 1e6) return `${exact} (${(n / 1e6).toFixed(2)} M)`;
    if (n >= 1e3) return `${exact} (${(n / 1e3).toFixed(1)} k)`;
    return exact;
  }

  function formatSize(size) {
    if (Array.isArray(size)) return size.join(" × ");
    if (typeof size === "number") return `${size} × ${size}`;
    if (size && typeof size === "object") return Object.values(size).join(" × ");
    return size == null ? "—" : String(size);
  }

  function formatNumbers(values) {
    return Array.isArray(values) ? values.map((v) => (typeof v === "number" ? v.toFixed(3) : v)).join(", ") : String(values);
  }

  function addField(label, value, { title, code } = {}) {
    if (value === undefined || value === null || value === "") return null;
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    if (value instanceof Node) {
      dd.append(value);
    } else if (code) {
      const c = document.createElement("code");
      c.textContent = value;
      if (title) c.title = title;
      dd.append(c);
    } else {
      dd.textContent = value;
    }
    if (title && !code) dd.title = title;
    els.cardFields.append(dt, dd);
    return dd;
  }

  function classList(classes) {
    const wrap = document.createDocumentFragment();
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = `Show the ${classes.length} class names`;
    const list = document.createElement("ol");
    list.className = "classes";
    list.start = 0;
    for (const name of classes) {
      const li = document.createElement("li");
      li.textContent = name;
      list.append(li);
    }
    details.append(summary, list);
    wrap.append(details);
    return wrap;
  }

  function renderModel(m) {
    els.cardFields.replaceChildren();
    const classes = Array.isArray(m.classes) ? m.classes : [];
    const count = typeof m.num_classes === "number" ? m.num_classes : classes.length;
    addField("Name", m.name);
    addField("Variant", m.variant);
    const classesValue = document.createDocumentFragment();
    const countSpan = document.createElement("span");
    countSpan.textContent = `${count} classes`;
    classesValue.append(countSpan);
    if (classes.length) classesValue.append(classList(classes));
    addField("Classes", classesValue);
    addField("Input size", formatSize(m.input_size));
    addField("Parameters", formatCount(m.parameters));
    if (m.normalization && m.normalization.mean) {
      addField("Normalization", `mean ${formatNumbers(m.normalization.mean)}; std ${formatNumbers(m.normalization.std)}`);
    }
    if (m.weights_sha256) {
      const sha = String(m.weights_sha256);
      const short = sha.length > 16 ? `${sha.slice(0, 12)}…${sha.slice(-4)}` : sha;
      const dd = addField("SHA-256", short, { code: true, title: sha });
      if (dd) dd.querySelector("code").setAttribute("aria-label", `SHA-256 ${sha}`);
    }
    addField("Weights file", m.weights_file);
    const runtime = [m.backend, m.precision].filter(Boolean).join(" / ");
    addField("Backend / precision", runtime);
    els.cardLoading.hidden = true;
    els.cardFields.hidden = false;
    els.card.setAttribute("aria-busy", "false");
  }

  async function loadModel() {
    els.cardLoading.hidden = false;
    els.cardLoading.textContent = "Loading the model card…";
    try {
      const response = await api("/v1/model");
      renderModel(await response.json());
      state.modelLoaded = true;
    } catch (err) {
      els.card.setAttribute("aria-busy", "false");
      if (err instanceof NeedsKey) {
        els.cardLoading.textContent = "The model card needs an API key.";
      } else {
        els.cardLoading.textContent = `Could not load the model card: ${err instanceof ShownError ? err.message : err}`;
      }
    }
  }

  // ---------- top 5 ----------

  function percent(p) {
    return `${(p * 100).toFixed(1)}%`;
  }

  /** The first image's [{label, probability}] in a /v1/predict answer:
   * {"predictions": [{"filename", "top": [{"label", "index", "probability"}]}]}. */
  function predictions(body) {
    const first = body && Array.isArray(body.predictions) ? body.predictions[0] : null;
    const rows = first && Array.isArray(first.top) ? first.top : [];
    return rows.map((r) => ({ label: String(r.label ?? r.index), probability: Number(r.probability) }));
  }

  function renderTop5(rows) {
    els.top5.replaceChildren();
    for (const { label, probability } of rows) {
      const li = document.createElement("li");
      li.dataset.label = label;
      li.dataset.probability = String(probability);
      const name = document.createElement("span");
      name.className = "bar-label";
      name.textContent = label;
      const pct = document.createElement("span");
      pct.className = "bar-value";
      pct.textContent = percent(probability);
      const track = document.createElement("span");
      track.className = "bar-track";
      track.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.className = "bar-fill";
      fill.style.width = `${Math.max(0, Math.min(1, probability)) * 100}%`;
      track.append(fill);
      li.append(name, " ", pct, track);
      els.top5.append(li);
    }
    els.top5Empty.hidden = rows.length > 0;
  }

  function clearTop5(message) {
    els.top5.replaceChildren();
    els.top5Empty.hidden = false;
    els.top5Empty.textContent = message;
  }

  // ---------- Grad-CAM ----------

  /** Show the Grad-CAM image (when ``on`` and fetched) or the plain one; no figure when neither can be shown. */
  function showGradcam(on) {
    const ready = Boolean(on && state.gradcamUrl);
    els.gradcam.hidden = !ready;
    els.preview.hidden = ready || state.previewBroken;
    els.figure.hidden = !ready && (state.previewBroken || !state.file);
    els.caption.textContent = ready ? state.gradcamInfo : state.file ? state.file.name : "";
  }

  function dropGradcam() {
    if (state.explainAbort) state.explainAbort.abort();
    if (state.gradcamUrl) URL.revokeObjectURL(state.gradcamUrl);
    state.gradcamUrl = null;
    state.gradcamInfo = "";
    els.gradcam.removeAttribute("src");
    els.gradcam.hidden = true;
  }

  /** A header value the server percent-encodes when it is not printable ASCII. */
  function headerText(value) {
    if (value === null) return null;
    try {
      return decodeURIComponent(value);
    } catch {
      return value;
    }
  }

  async function loadGradcam() {
    const file = state.file;
    const generation = state.generation;
    if (!file) return;
    if (state.gradcamUrl) {
      showGradcam(true);
      return;
    }
    if (state.explainAbort) state.explainAbort.abort();
    const abort = new AbortController();
    state.explainAbort = abort;
    setStatus("Computing Grad-CAM…");
    try {
      const response = await api("/v1/explain", { method: "POST", body: fileForm(file), signal: abort.signal });
      const blob = await response.blob();
      if (generation !== state.generation) return;
      const label = headerText(response.headers.get("X-Class-Label"));
      const index = response.headers.get("X-Class-Index");
      const url = URL.createObjectURL(blob);
      await new Promise((resolve, reject) => {
        els.gradcam.onload = resolve;
        els.gradcam.onerror = () => reject(new ShownError("The Grad-CAM image could not be shown."));
        els.gradcam.src = url;
      });
      if (generation !== state.generation) return;
      state.gradcamUrl = url;
      state.gradcamInfo = label
        ? `Grad-CAM for “${label}”${index !== null ? ` (class ${index})` : ""}`
        : "Grad-CAM for the top class";
      els.gradcam.alt = `Grad-CAM heat map for ${label || "the top class"} over the chosen image`;
      setStatus("");
      showGradcam(els.toggle.checked);
    } catch (err) {
      if (generation !== state.generation) return;
      if (!(err && err.name === "AbortError")) {
        els.toggle.checked = false;
        showGradcam(false);
      }
      report(err);
    }
  }

  els.toggle.addEventListener("change", () => {
    if (els.toggle.checked) {
      clearError();
      loadGradcam();
    } else {
      showGradcam(false);
    }
  });

  // ---------- choosing a file ----------

  /** Whether ``file`` may be an image: its type says so, or the browser does not know (the server decides). */
  function looksLikeImage(file) {
    return !file.type || file.type.startsWith("image/");
  }

  function showPreview(file) {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(file);
    els.preview.classList.remove("small-image");
    els.preview.onload = () => {
      if (els.preview.naturalWidth && els.preview.naturalWidth < 128) els.preview.classList.add("small-image");
    };
    // The browser may not decode what the server can (or the file may be broken): the server's answer decides.
    els.preview.onerror = () => {
      state.previewBroken = true;
      showGradcam(els.toggle.checked);
    };
    state.previewBroken = false;
    els.preview.src = state.previewUrl;
    els.preview.alt = `The chosen image, ${file.name || "unnamed"}`;
    els.figure.hidden = false;
    showGradcam(false);
  }

  /** Predict ``file``: "ok", "key" (waiting for an API key), "fail" (error shown) or "stale" (superseded). */
  async function predict(file, generation) {
    if (state.predictAbort) state.predictAbort.abort();
    const abort = new AbortController();
    state.predictAbort = abort;
    els.top5.setAttribute("aria-busy", "true");
    setStatus("Predicting…");
    try {
      const response = await api(`/v1/predict?topk=${TOPK}`, { method: "POST", body: fileForm(file), signal: abort.signal });
      const body = await response.json();
      if (generation !== state.generation) return "stale";
      renderTop5(predictions(body));
      setStatus("");
      return "ok";
    } catch (err) {
      if (generation !== state.generation || (err && err.name === "AbortError")) return "stale";
      clearTop5(err instanceof NeedsKey ? "Waiting for the API key." : "No prediction for this file.");
      report(err);
      return err instanceof NeedsKey ? "key" : "fail";
    } finally {
      if (generation === state.generation) els.top5.setAttribute("aria-busy", "false");
    }
  }

  async function analyse(file, { keepPreview = false } = {}) {
    state.generation += 1;
    const generation = state.generation;
    state.file = file;
    clearError();
    dropGradcam();
    if (!keepPreview) showPreview(file);
    clearTop5("Predicting…");
    els.toggle.disabled = true;
    const outcome = await predict(file, generation);
    if (outcome === "stale" || outcome === "key") return;
    if (outcome === "fail") {
      state.file = null; // the server could not read it: do not keep showing it as if it could
      els.figure.hidden = true;
      els.toggle.checked = false;
      return;
    }
    els.toggle.disabled = false;
    if (els.toggle.checked) loadGradcam();
  }

  function choose(file) {
    if (!file) return;
    if (!looksLikeImage(file)) {
      state.generation += 1;
      state.file = null;
      dropGradcam();
      els.figure.hidden = true;
      els.toggle.disabled = true;
      els.toggle.checked = false;
      clearTop5("No prediction yet.");
      setStatus("");
      showError(`“${file.name}” is not an image${file.type ? ` (${file.type})` : ""}. Choose a JPEG, PNG or other image file.`);
      return;
    }
    analyse(file);
  }

  els.file.addEventListener("change", () => {
    choose(els.file.files && els.file.files[0]);
  });

  // Drag and drop onto the drop zone (the whole page accepts a drop too, so a near miss does not open the file).
  // The drop zone is the file input's label: click, Enter or Space on the focused input opens the dialog.
  for (const target of [els.dropzone]) {
    target.addEventListener("dragenter", (e) => {
      e.preventDefault();
      els.dropzone.classList.add("dragging");
    });
    target.addEventListener("dragover", (e) => {
      e.preventDefault();
      if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
      els.dropzone.classList.add("dragging");
    });
    target.addEventListener("dragleave", () => els.dropzone.classList.remove("dragging"));
  }
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    els.dropzone.classList.remove("dragging");
    const files = e.dataTransfer && e.dataTransfer.files;
    if (!files || !files.length) {
      showError("Drop an image file here.");
      return;
    }
    choose(files[0]);
  });

  loadModel();
})();
