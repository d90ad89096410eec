// The staff page: a view of the JSON API (/v1/info, /v1/search, /v1/search/text, /v1/images,
// /v1/products, /v1/feedback). Plain JavaScript, no build step, no network beyond this server.
// Staff answer each located product: "This one" on a card, "Not in catalogue", or a product they
// pick by id (or description); the server keeps the photo and a confirmed one becomes a store view.
"use strict";

(() => {
  const TOP_K = 5;
  const KEY_STORAGE = "catalogue-indexer.api-key";
  const FEEDBACK_KEY_STORAGE = "catalogue-indexer.feedback-key";
  const PICKS = 6; // products listed for a description
  const $ = (id) => document.getElementById(id);
  const ui = {
    about: $("about"), keyForm: $("key-form"), keyReason: $("key-reason"), key: $("key"),
    take: $("take"), camera: $("camera"), choose: $("choose"), file: $("file"),
    categoryField: $("category-field"), category: $("category"),
    textForm: $("text-form"), text: $("text"), textButton: $("text-button"),
    status: $("status"), error: $("error"), results: $("results"),
    feedbackKeyForm: $("feedback-key-form"), feedbackKeyReason: $("feedback-key-reason"), feedbackKey: $("feedback-key"),
    feedbackKeyCancel: $("feedback-key-cancel"), toast: $("toast"),
  };
  let last = null; // the last search ({file} or {text}): repeated when the category changes
  let pending = null; // a search refused for want of a key: repeated once the key is entered
  let busy = false;
  let blobUrls = []; // object URLs of the current results, revoked when they are replaced
  let serverInfo = {}; // /v1/info: does the model have a text tower?
  let answers = []; // one per located product of the shown photo: what staff said about it
  // Whether the shown answer's confidence comes from a calibration fitted for this store. The built-in one was
  // fitted on synthetic photos and flags most right answers on real ones: it never says "Not sure" on its own.
  let calibratedForStore = false;
  let pendingSave = null; // feedback refused for want of the feedback key: retried once the key is entered

  class ApiError extends Error {
    constructor(message, status, retryAfter = null) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  // -- the API -------------------------------------------------------------------------------

  function storedKey(name = KEY_STORAGE) {
    try { return localStorage.getItem(name) || ""; } catch { return ""; }
  }

  function storeKey(name, value) {
    try { localStorage.setItem(name, value); } catch { /* kept for this page only */ }
  }

  /** A /v1 call; `feedback`: a /v1/feedback route, which takes the feedback key when one was entered. */
  async function api(path, options = {}, { feedback = false } = {}) {
    const headers = new Headers(options.headers || {});
    const key = (feedback && storedKey(FEEDBACK_KEY_STORAGE)) || storedKey();
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...options, headers });
    } catch {
      throw new ApiError("Cannot reach the server: check the connection and try again.", 0);
    }
    if (response.ok) return response;
    let line = "";
    try { line = (await response.json()).error || ""; } catch { /* not JSON: the status says enough */ }
    if (response.status === 401 && feedback) {
      throw new ApiError(storedKey(FEEDBACK_KEY_STORAGE) ? "That feedback key was refused: enter it again."
        : "Saving answers needs the feedback key.", 401);
    }
    if (response.status === 401) {
      askForKey(key ? "That API key was refused: enter it again." : "This server needs an API key.");
      throw new ApiError("Enter the API key to continue.", 401);
    }
    if (response.status === 503) {
      const wait = response.headers.get("Retry-After");
      throw new ApiError(`Busy, try again${wait ? ` in ${wait} s` : " in a moment"}.`, 503, wait);
    }
    throw new ApiError(capitalise(line) || `The server answered ${response.status}.`, response.status);
  }

  async function searchPhoto(file) {
    const params = new URLSearchParams({ top_k: String(TOP_K) });
    if (ui.category.value) params.append("filter", `category=${ui.category.value}`);
    const form = new FormData();
    form.append("image", file, file.name || "photo.jpg");
    return (await api(`/v1/search?${params}`, { method: "POST", body: form })).json();
  }

  async function searchText(text) {
    const filters = ui.category.value ? [`category=${ui.category.value}`] : [];
    const body = JSON.stringify({ text, top_k: 10, filters });
    return (await api("/v1/search/text", { method: "POST", headers: { "Content-Type": "application/json" }, body })).json();
  }

  /** Tell the server what the photo of `answer` shows: a product id, or null (not in the catalogue). */
  async function postFeedback(answer, productId) {
    const params = new URLSearchParams();
    if (productId) params.set("product_id", productId);
    else params.set("not_in_catalogue", "true");
    if (answer.box) params.set("box", answer.box.map((v) => Math.round(v)).join(","));
    // One parameter per id (an id may hold a comma); an empty second one keeps a lone id from being split at commas.
    for (const id of answer.answered.length === 1 ? [...answer.answered, ""] : answer.answered) params.append("answered", id);
    params.set("origin", "page");
    const form = new FormData();
    form.append("image", answer.file, answer.file.name || "photo.jpg");
    const response = await api(`/v1/feedback?${params}`, { method: "POST", body: form }, { feedback: true });
    return response.json();
  }

  async function deleteFeedback(id) {
    return (await api(`/v1/feedback/${encodeURIComponent(id)}`, { method: "DELETE" }, { feedback: true })).json();
  }

  /** The product with this id (as typed, else in capitals) as a card's match; null when there is none.
   * The id goes in the query: any id ('/', '?', '#', '..') arrives as typed, which a path segment does not promise. */
  async function findProduct(id) {
    for (const candidate of new Set([id, id.toUpperCase()])) {
      try {
        const product = await (await api(`/v1/products?${new URLSearchParams({ product_id: candidate })}`)).json();
        const image = product.images[0] || {};
        return {
          product_id: product.product_id, category: product.category, display: product.display, point_id: image.point_id,
          colour: image.colour, source: "catalogue",
        };
      } catch (error) {
        if (error.status !== 404 && error.status !== 422) throw error; // 422: longer than any id can be
      }
    }
    return null;
  }

  /** An <img> showing a /v1 image: a plain src, or fetched with the key into a blob URL (img cannot send headers). */
  function setImage(img, url) {
    if (!storedKey()) {
      img.src = url;
      return;
    }
    api(url).then((r) => r.blob()).then((blob) => {
      const objectUrl = URL.createObjectURL(blob);
      blobUrls.push(objectUrl);
      img.src = objectUrl;
    }).catch(() => img.classList.add("missing"));
  }

  // -- the collection ---------------------------------------------------------------------

  async function loadInfo() {
    try {
      const info = await (await api("/v1/info")).json();
      serverInfo = info;
      for (const label of document.querySelectorAll(".pick label")) label.textContent = pickLabel();
      fillCategories(info.categories || []);
      ui.textForm.hidden = !info.text;
      const models = (info.models || []).map((m) => m.model).join(" + ");
      const count = info.products != null ? `${info.products} products` : `${info.images} images`;
      ui.about.textContent = `${count} in the catalogue · ${models}`;
    } catch (error) {
      if (error.status === 503) {
        ui.about.textContent = "The server is getting ready…";
        setTimeout(loadInfo, (Number(error.retryAfter) || 2) * 1000);
      } else if (error.status !== 401) {
        showError(error.message);
      }
    }
  }

  function fillCategories(categories) {
    const chosen = ui.category.value;
    ui.category.replaceChildren(ui.category.options[0]);
    for (const category of categories) ui.category.add(new Option(category, category, false, category === chosen));
    ui.categoryField.hidden = categories.length === 0;
  }

  function askForKey(reason) {
    ui.keyReason.textContent = reason;
    ui.keyForm.hidden = false;
    ui.key.value = "";
    ui.key.focus();
  }

  // -- searching ----------------------------------------------------------------------------

  async function search(query) {
    if (busy) return;
    last = query;
    setBusy(true);
    try {
      const result = query.file ? await searchPhoto(query.file) : await searchText(query.text);
      await render(result, query);
    } catch (error) {
      if (error.status === 401) pending = query;
      ui.status.textContent = "";
      showError(error.message);
    } finally {
      setBusy(false);
    }
  }

  function setBusy(on) {
    if (on && ui.toast.querySelector(".error")) clearToast(); // a saved answer keeps its Undo through the next search
    busy = on;
    document.body.classList.toggle("busy", on);
    ui.results.setAttribute("aria-busy", String(on));
    for (const control of [ui.take, ui.choose, ui.textButton, ui.category]) control.disabled = on;
    if (on) {
      showError("");
      ui.status.textContent = "Searching…";
    }
  }

  function showError(message) {
    ui.error.textContent = message;
  }

  // -- results ------------------------------------------------------------------------------

  async function render(result, query) {
    for (const url of blobUrls) URL.revokeObjectURL(url);
    blobUrls = [];
    const groups = (result.groups || []).filter((g) => g.matches.length);
    calibratedForStore = Boolean(result.calibrated_for_store);
    answers = [];
    const parts = [];
    if (query.file) parts.push(await photo(query.file, result, groups));
    groups.forEach((group, i) => parts.push(groupSection(group, i, groups.length, query)));
    ui.results.replaceChildren(...parts);
    ui.status.textContent = summary(groups, query);
  }

  /** The photo with a numbered box around each located product, in % of the photo as the server decoded it. */
  async function photo(file, result, groups) {
    const url = URL.createObjectURL(file);
    blobUrls.push(url);
    const img = make("img", { alt: "Your photo", src: url });
    const frame = make("div", { className: "frame" }, img);
    let width = result.width;
    let height = result.height;
    if (!width || !height) {
      try { await img.decode(); } catch { /* drawn without boxes */ }
      width = img.naturalWidth;
      height = img.naturalHeight;
    }
    groups.forEach((group, i) => {
      if (!group.box || !width || !height) return;
      const [x0, y0, x1, y1] = group.box;
      const box = make("div", { className: "box" }, make("span", { textContent: String(i + 1) }));
      Object.assign(box.style, {
        left: pct(x0 / width), top: pct(y0 / height), width: pct((x1 - x0) / width), height: pct((y1 - y0) / height),
      });
      frame.append(box);
    });
    return make("figure", { className: "photo" }, frame);
  }

  function groupSection(group, index, count, query) {
    const section = make("section", { className: "group" });
    section.dataset.confident = String(Boolean(group.confident));
    const title = query.text ? `Products matching “${query.text}”` : count > 1 ? `Product ${index + 1} of ${count}` : "Best matches";
    section.append(make("h2", { textContent: title }));
    if (!query.file) {
      section.append(make("ol", { className: "cards" }, ...group.matches.map((m) => card(m))));
      return section;
    }
    const answer = {
      file: query.file, box: group.box, answered: group.matches.map((m) => m.product_id), entry: null, saving: false, section,
    };
    answers.push(answer);
    section.append(verdict(group), make("ol", { className: "cards" }, ...group.matches.map((m) => card(m, answer))),
      answerControls(answer, index));
    return section;
  }

  function verdict(group) {
    if (group.confident) {
      return make("p", { className: "verdict sure", textContent: `Likely match (confidence ${percent(group.confidence)}).` });
    }
    if (!calibratedForStore) {
      return make("div", { className: "verdict check" },
        make("p", { textContent: "Check the candidates: compare the photo with them." }),
        make("p", { textContent: `Confidence ${percent(group.confidence)}, from the built-in calibration, `
          + "not yet fitted to this store's photos: it learns from the answers staff confirm." }));
    }
    return make("div", { className: "verdict not-sure" },
      make("p", {}, make("strong", { textContent: "Not sure." }),
        " The first product is probably not the right one, or this product is not in the catalogue."),
      make("p", { textContent: `Confidence ${percent(group.confidence)}. Compare the photo with these candidates.` }));
  }

  /** A product card; with `answer` (a located product of a photo), it has a "This one" button. */
  function card(match, answer = null) {
    const store = match.source === "store";
    const shown = shownFields(match);
    const img = make("img", {
      alt: `${store ? "Store photo" : "Catalogue image"} of ${shown.title}`, loading: "lazy", width: 96, height: 96,
    });
    if (match.point_id) setImage(img, `/v1/images/${encodeURIComponent(match.point_id)}`);
    else img.classList.add("missing");
    const details = make("div", { className: "details" }, ...cardText(match.product_id, shown));
    if (store) {
      details.append(make("span", {
        className: "badge", textContent: "store photo", title: "Matched through a store photo that staff confirmed",
      }));
    }
    if (match.score != null) details.append(make("span", { className: "score", textContent: `Score ${match.score.toFixed(3)}` }));
    if (match.colour) {
      const hex = match.colour.hex;
      details.append(make("span", { className: "colour" },
        make("span", { className: "swatch", title: `Dominant colour ${hex}`, style: `background:${hex}` }),
        make("span", { textContent: hex })));
    }
    if (answer) {
      const button = make("button", { type: "button", className: "this-one", textContent: "This one" });
      button.dataset.product = match.product_id;
      button.setAttribute("aria-pressed", "false");
      button.setAttribute("aria-label", `This one: ${match.product_id}`);
      button.addEventListener("click", () => {
        if (button.getAttribute("aria-pressed") === "true") undo(answer, answer.entry);
        else save(answer, match.product_id);
      });
      details.append(button);
    }
    const item = make("li", { className: "card" });
    if (match.rank != null) item.append(make("span", { className: "rank", textContent: String(match.rank) }));
    item.append(img, details);
    return item;
  }

  /** What the card says: the server's `display` (its --display fields), else the product code and category. */
  function shownFields(match) {
    if (match.display && match.display.title) return match.display;
    return { title: match.product_id, fields: match.category ? [{ name: "category", value: match.category }] : [] };
  }

  /** The title, the product code (smaller, unless it is the title) and the fields as "Label: value"; all as text. */
  function cardText(productId, shown) {
    const same = shown.title === productId;
    const parts = [make("span", { className: same ? "title product-id" : "title", textContent: shown.title })];
    if (!same) parts.push(make("span", { className: "product-id code", textContent: productId }));
    if (shown.fields.length) {
      parts.push(make("dl", { className: "fields" }, ...shown.fields.map(({ name, value }) => {
        const row = make("div", {}, make("dt", { textContent: label(name) }), make("dd", { textContent: value }));
        row.dataset.field = name;
        return row;
      })));
    }
    return parts;
  }

  const label = (name) => capitalise(name.replace(/[_-]+/g, " ").trim());

  // -- answers: confirm, not in the catalogue, pick another product, undo ---------------------------

  /** Below a located product's cards: "Not in catalogue" and "Pick another product". */
  function answerControls(answer, index) {
    const notHere = make("button", { type: "button", className: "not-in-catalogue", textContent: "Not in catalogue" });
    notHere.setAttribute("aria-pressed", "false");
    notHere.addEventListener("click", () => {
      if (notHere.getAttribute("aria-pressed") === "true") undo(answer, answer.entry);
      else save(answer, null);
    });

    const id = `pick-${index}`;
    const input = make("input", { id, type: "search", maxLength: 300, required: true, autocomplete: "off" });
    const note = make("p", { className: "pick-note quiet", role: "status" });
    const picks = make("ol", { className: "cards picks" });
    const form = make("form", { className: "pick-form" },
      make("label", { htmlFor: id, textContent: pickLabel() }),
      make("div", { className: "row" }, input, make("button", { type: "submit", textContent: "Find" })),
      note);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      pick(answer, input.value.trim(), picks, note);
    });
    const details = make("details", { className: "pick" }, make("summary", { textContent: "Pick another product" }), form, picks);
    details.addEventListener("toggle", () => { if (details.open) input.focus(); });

    return make("div", { className: "answer" },
      make("div", { className: "row" }, notHere),
      details,
      make("p", { className: "saved-note", role: "status" }));
  }

  const pickLabel = () => (serverInfo.text ? "Product id or description" : "Product id");

  /** The products a staff member looks for: the one with that id, else (text models) those matching it as a description. */
  async function pick(answer, text, list, note) {
    if (!text) return;
    note.textContent = "Looking…";
    list.replaceChildren();
    try {
      let matches = [];
      const product = await findProduct(text);
      if (product) matches = [product];
      else if (serverInfo.text) {
        const body = JSON.stringify({ text, top_k: PICKS });
        const found = await (await api("/v1/search/text", { method: "POST", headers: { "Content-Type": "application/json" }, body })).json();
        matches = found.matches.map(({ rank, ...match }) => match);
      }
      list.replaceChildren(...matches.map((m) => card(m, answer)));
      mark(answer);
      // Never a silent fallback: when no id matched, the note says so before any description matches.
      note.textContent = !matches.length ? `No product “${text}” in the catalogue.`
        : product ? "Is this it? Press “This one” to save it."
          : `No product has the id “${text}”. ${matches.length} products match it as a description: press “This one” on the right one.`;
    } catch (error) {
      note.textContent = error.message;
    }
  }

  /** Record `productId` (null: not in the catalogue) as what the answer's photo shows. */
  async function save(answer, productId) {
    if (answer.saving) return;
    answer.saving = true;
    answer.section.setAttribute("aria-busy", "true");
    try {
      const entry = await postFeedback(answer, productId);
      for (const other of answers) { // one entry per photo: another product of this photo may have been replaced
        if (other !== answer && other.entry && entry.replaced && other.entry.id === entry.replaced.id) {
          other.entry = null;
          mark(other);
        }
      }
      answer.entry = entry;
      mark(answer);
      toast(`Saved: ${described(entry)}`, { undo: () => undo(answer, entry) });
    } catch (error) {
      feedbackFailed(error, () => save(answer, productId));
    } finally {
      answer.saving = false;
      answer.section.setAttribute("aria-busy", "false");
    }
  }

  async function undo(answer, entry) {
    if (!entry) return;
    try {
      await deleteFeedback(entry.id);
    } catch (error) {
      if (error.status !== 404) { // 404: already gone, which is what was asked
        feedbackFailed(error, () => undo(answer, entry));
        return;
      }
    }
    if (answer.entry && answer.entry.id === entry.id) {
      answer.entry = null;
      mark(answer);
    }
    toast(`Undone: ${described(entry)} is no longer saved.`, { focus: ui.toast.contains(document.activeElement) });
  }

  function feedbackFailed(error, retry) {
    if (error.status === 401) {
      pendingSave = retry;
      askForFeedbackKey(error.message);
    } else {
      toast(error.message, { error: true });
    }
  }

  const described = (entry) => (entry.product_id == null ? "not in catalogue"
    : `${entry.product_id}${entry.verdict === "corrected" ? " (corrected)" : ""}`);

  /** Show a located product's answer: the pressed card or button, and a line saying what was saved. */
  function mark(answer) {
    const entry = answer.entry;
    for (const button of answer.section.querySelectorAll("button.this-one")) {
      const on = Boolean(entry) && entry.product_id === button.dataset.product;
      button.setAttribute("aria-pressed", String(on));
      button.textContent = on ? "✓ Saved" : "This one";
      button.closest(".card").classList.toggle("confirmed", on);
    }
    const notHere = answer.section.querySelector("button.not-in-catalogue");
    if (notHere) {
      const on = Boolean(entry) && entry.product_id == null;
      notHere.setAttribute("aria-pressed", String(on));
      notHere.textContent = on ? "✓ Not in catalogue" : "Not in catalogue";
    }
    answer.section.dataset.answer = entry ? entry.verdict : "";
    const note = answer.section.querySelector(".saved-note");
    if (note) note.textContent = entry ? `Saved: ${described(entry)}.` : "";
  }

  /** The banner at the bottom: a saved answer with its Undo, or a feedback error. */
  function toast(message, { undo: onUndo = null, error = false, focus = false } = {}) {
    const close = make("button", { type: "button", className: "close", textContent: "×", title: "Dismiss" });
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", clearToast);
    const body = make("div", { className: `toast${error ? " error" : ""}`, ...(error ? { role: "alert" } : {}) },
      make("p", { textContent: message }));
    if (onUndo) {
      const undoButton = make("button", { type: "button", className: "undo", textContent: "Undo" });
      undoButton.addEventListener("click", onUndo);
      body.append(undoButton);
    }
    body.append(close);
    ui.toast.replaceChildren(body);
    if (focus) close.focus();
  }

  function clearToast() {
    const had = ui.toast.contains(document.activeElement);
    ui.toast.replaceChildren();
    if (had) ui.results.querySelector("button.this-one")?.focus();
  }

  function askForFeedbackKey(reason) {
    ui.feedbackKeyReason.textContent = reason;
    ui.feedbackKeyForm.hidden = false;
    ui.feedbackKey.value = "";
    ui.feedbackKey.focus();
  }

  function summary(groups, query) {
    if (!groups.length) {
      const where = ui.category.value ? ` in ${ui.category.value}` : "";
      return `No products found${where}.`;
    }
    if (query.text) return `${groups[0].matches.length} products match “${query.text}”.`;
    const first = groups[0];
    const best = first.matches[0];
    const named = `${best.product_id}${best.category ? `, ${best.category}` : ""}`;
    const unsure = calibratedForStore ? `Not sure. Closest: ${named}.` : `Closest: ${named}.`;
    const lead = first.confident ? `Best match: ${named}.` : `${unsure} Check the candidates.`;
    return groups.length > 1 ? `${groups.length} products found in the photo. ${lead}` : lead;
  }

  // -- helpers -------------------------------------------------------------------------------

  function make(tag, props = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "style") node.style.cssText = value;
      else if (name in node) node[name] = value;
      else node.setAttribute(name, value);
    }
    node.append(...children);
    return node;
  }

  const pct = (fraction) => `${(fraction * 100).toFixed(3)}%`;
  const percent = (p) => (p == null ? "unknown" : `${Math.round(p * 100)} %`);
  const capitalise = (s) => s.charAt(0).toUpperCase() + s.slice(1);

  function photoFrom(input) {
    const file = input.files && input.files[0];
    input.value = ""; // the same photo can be chosen again
    if (file) search({ file });
  }

  // -- wiring --------------------------------------------------------------------------------

  ui.take.addEventListener("click", () => ui.camera.click());
  ui.choose.addEventListener("click", () => ui.file.click());
  ui.camera.addEventListener("change", () => photoFrom(ui.camera));
  ui.file.addEventListener("change", () => photoFrom(ui.file));
  ui.category.addEventListener("change", () => { if (last) search(last); });

  ui.textForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = ui.text.value.trim();
    if (text) search({ text });
  });

  ui.feedbackKeyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey(FEEDBACK_KEY_STORAGE, ui.feedbackKey.value.trim());
    ui.feedbackKeyForm.hidden = true;
    const retry = pendingSave;
    pendingSave = null;
    if (retry) retry();
  });
  ui.feedbackKeyCancel.addEventListener("click", () => {
    ui.feedbackKeyForm.hidden = true;
    pendingSave = null;
    ui.results.querySelector("button.this-one")?.focus();
  });

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    storeKey(KEY_STORAGE, ui.key.value.trim());
    ui.keyForm.hidden = true;
    showError("");
    loadInfo();
    if (pending) {
      const query = pending;
      pending = null;
      search(query);
    }
  });

  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", (event) => {
    if (!event.relatedTarget) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file && file.type.startsWith("image/")) search({ file });
    else if (file) showError("That is not an image: drop a photo.");
  });

  loadInfo();
})();
