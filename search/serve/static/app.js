// The staff page: a view of the JSON API (/v1/info, /v1/search, /v1/search/text, /v1/images).
// Plain JavaScript, no build step, no network beyond this server.
"use strict";

(() => {
  const TOP_K = 5;
  const KEY_STORAGE = "catalogue-indexer.api-key";
  const $ = (id) => document.getElementById(id);
  const ui = {
    about: $("about"), keyForm: $("key-form"), keyReason: $("key-reason"), key: $("key"),
    take: $("take"), camera: $("camera"), choose: $("choose"), file: $("file"),
    categoryField: $("category-field"), category: $("category"),
    textForm: $("text-form"), text: $("text"), textButton: $("text-button"),
    status: $("status"), error: $("error"), results: $("results"),
  };
  let last = null; // the last search ({file} or {text}): repeated when the category changes
  let pending = null; // a search refused for want of a key: repeated once the key is entered
  let busy = false;
  let blobUrls = []; // object URLs of the current results, revoked when they are replaced

  class ApiError extends Error {
    constructor(message, status, retryAfter = null) {
      super(message);
      this.status = status;
      this.retryAfter = retryAfter;
    }
  }

  // -- the API -------------------------------------------------------------------------------

  function storedKey() {
    try { return localStorage.getItem(KEY_STORAGE) || ""; } catch { return ""; }
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = storedKey();
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
    if (query.file) section.append(verdict(group));
    section.append(make("ol", { className: "cards" }, ...group.matches.map(card)));
    return section;
  }

  function verdict(group) {
    if (group.confident) {
      return make("p", { className: "verdict sure", textContent: `Likely match (confidence ${percent(group.confidence)}).` });
    }
    return make("div", { className: "verdict not-sure" },
      make("p", {}, make("strong", { textContent: "Not sure." }),
        " The first product is probably not the right one, or this product is not in the catalogue."),
      make("p", { textContent: `Confidence ${percent(group.confidence)}. Compare the photo with these candidates.` }));
  }

  function card(match) {
    const img = make("img", { alt: `Catalogue image of ${match.product_id}`, loading: "lazy", width: 96, height: 96 });
    setImage(img, `/v1/images/${encodeURIComponent(match.point_id)}`);
    const details = make("div", { className: "details" },
      make("span", { className: "product-id", textContent: match.product_id }),
      make("span", { className: "category", textContent: match.category || "No category" }),
      make("span", { className: "score", textContent: `Score ${match.score.toFixed(3)}` }));
    if (match.colour) {
      const hex = match.colour.hex;
      details.append(make("span", { className: "colour" },
        make("span", { className: "swatch", title: `Dominant colour ${hex}`, style: `background:${hex}` }),
        make("span", { textContent: hex })));
    }
    return make("li", { className: "card" }, make("span", { className: "rank", textContent: String(match.rank) }), img, details);
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
    const lead = first.confident ? `Best match: ${named}.` : `Not sure. Closest: ${named}. Check the candidates.`;
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

  ui.keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    try { localStorage.setItem(KEY_STORAGE, ui.key.value.trim()); } catch { /* kept for this page only */ }
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
