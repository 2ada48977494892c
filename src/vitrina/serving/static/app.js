"use strict";
// The listing check page: choose a category, add photos, POST /v1/check, show the verdict.
(() => {
  const { api, apiKeyField, label, percent, loadModel, el } = vitrina;
  const form = document.getElementById("check-form");
  const category = document.getElementById("category");
  const note = document.getElementById("category-note");
  const noteText = document.getElementById("category-note-text");
  const undo = document.getElementById("undo-category");
  const input = document.getElementById("photo");
  const dropzone = document.getElementById("dropzone");
  const previews = document.getElementById("previews");
  const submit = document.getElementById("submit");
  const clear = document.getElementById("clear");
  const result = document.getElementById("result");
  const live = document.getElementById("verdict-live");
  const keyField = apiKeyField(start);

  let photos = [];
  let previewUrls = [];
  let categoryBeforeSwitch = null;
  let maxPhotos = 10;

  async function start() {
    try {
      const model = await loadModel();
      maxPhotos = model.limits.max_photos;
      document.getElementById("max-photos").textContent = maxPhotos;
      document.getElementById("max-size").textContent = model.limits.max_upload_mb;
      fillCategories(model.labels, [...new Set(Object.values(model.coarse_of || {}))].sort());
    } catch (error) {
      if (error.status === 401) keyField.ask();
      showError(error.status === 401 ? "Enter the API key to load the categories." : error.message);
    }
  }

  function fillCategories(labels, parents) {
    const chosen = category.value;
    category.replaceChildren(el("option", null, "Choose a category…"));
    category.firstChild.value = "";
    category.firstChild.disabled = true;
    const options = (names) => names.map((name) => {
      const option = el("option", null, label(name));
      option.value = name;
      return option;
    });
    if (parents.length) {  // a model trained with coarse labels: a listing may be filed at either level
      const broad = el("optgroup");
      broad.label = "Broad categories";
      broad.append(...options(parents));
      const precise = el("optgroup");
      precise.label = "Precise categories";
      precise.append(...options(labels));
      category.append(broad, precise);
    } else {
      category.append(...options(labels));
    }
    category.value = labels.includes(chosen) || parents.includes(chosen) ? chosen : "";
    updateButtons();
  }

  // ------------------------------------------------------------------ photos
  function setPhotos(files) {
    const images = Array.from(files).filter((file) => file.type === "" || file.type.startsWith("image/"));
    photos = images.slice(0, maxPhotos);
    previewUrls.forEach((url) => URL.revokeObjectURL(url));
    previewUrls = photos.map((file) => URL.createObjectURL(file));
    previews.replaceChildren(
      ...photos.map((file, i) => {
        const img = el("img");
        img.src = previewUrls[i];
        img.alt = `Preview of ${file.name}`;
        return el("li", "preview", null, img, el("span", "preview-name", file.name));
      }),
    );
    if (images.length < files.length) showError("Only image files can be checked; the others were left out.");
    else if (images.length > maxPhotos) showError(`Only the first ${maxPhotos} photos are used for one listing.`);
    updateButtons();
  }

  function updateButtons() {
    submit.disabled = photos.length === 0 || !category.value;
    clear.disabled = photos.length === 0;
  }

  input.addEventListener("change", () => setPhotos(input.files));
  ["dragenter", "dragover"].forEach((type) =>
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    }),
  );
  ["dragleave", "drop"].forEach((type) => dropzone.addEventListener(type, () => dropzone.classList.remove("dragging")));
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    setPhotos(event.dataTransfer.files);
  });
  clear.addEventListener("click", () => {
    input.value = "";
    setPhotos([]);
    input.focus();
  });
  category.addEventListener("change", () => {
    note.hidden = true;
    category.classList.remove("switched");
    updateButtons();
  });
  undo.addEventListener("click", () => {
    if (categoryBeforeSwitch) category.value = categoryBeforeSwitch;
    note.hidden = true;
    category.classList.remove("switched");
    category.focus();
  });

  // ------------------------------------------------------------------ the check
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (submit.disabled) return;
    const declared = category.value;
    const body = new FormData();
    photos.forEach((file) => body.append("image", file, file.name));
    body.append("category", declared);
    submit.disabled = true;
    submit.textContent = "Checking…";
    result.setAttribute("aria-busy", "true");
    result.replaceChildren(el("div", "loading", null, el("span", "spinner"), el("span", null, "Checking the photos…")));
    try {
      showVerdict(await (await api("/v1/check", { method: "POST", body })).json());
    } catch (error) {
      if (error.status === 401) keyField.ask();
      const wait = error.retryAfter ? ` Try again in ${error.retryAfter} s.` : "";
      showError(`${error.message}${wait}`);
    } finally {
      result.removeAttribute("aria-busy");
      submit.textContent = "Check listing";
      updateButtons();
    }
  });

  const VERDICTS = {
    match: { title: "Matches the category", icon: "✓" },
    mismatch: { title: "Category mismatch", icon: "!" },
    uncertain: { title: "Not sure", icon: "?" },
  };

  function verdictMessage(check) {
    const predicted = label(check.predicted);
    const declared = label(check.declared);
    if (check.verdict === "match") return `The photos show ${predicted}, as declared.`;
    if (check.verdict === "mismatch") {
      const suggested = label(check.suggestion || check.predicted);
      const broadly = check.suggestion_level === "coarse" ? " (the model is sure only of the broad category)" : "";
      return `The photos look like ${suggested}, not ${declared}${broadly}. The category was switched to ${suggested}; check it before publishing.`;
    }
    const needed = check.threshold !== null ? ` (needs ${percent(check.threshold)})` : "";
    return `The model is not confident about these photos: best guess ${predicted} at ${percent(check.confidence)}${needed}. ` +
      `The category was left as ${declared}.`;
  }

  function showVerdict(check) {
    const kind = VERDICTS[check.verdict];
    const message = verdictMessage(check);
    if (check.verdict === "mismatch" && check.suggestion) {
      categoryBeforeSwitch = check.declared;
      category.value = check.suggestion;
      category.classList.remove("switched");
      void category.offsetWidth; // restart the highlight animation
      category.classList.add("switched");
      noteText.textContent = `Switched from ${label(check.declared)} to ${label(check.suggestion)} by the check.`;
      note.hidden = false;
    }
    live.textContent = `${kind.title}. ${message}`;

    const banner = el("div", `verdict verdict-${check.verdict}`, null,
      el("span", "verdict-icon", kind.icon),
      el("div", "verdict-text", null, el("p", "verdict-title", kind.title), el("p", "verdict-message", message)));
    banner.id = "verdict";
    banner.dataset.verdict = check.verdict;

    const facts = el("dl", "facts", null,
      fact("Declared", label(check.declared)),
      fact("Predicted", label(check.predicted), "predicted"),
      fact("Confidence", percent(check.confidence), "confidence"));

    const meter = el("div", "meter", null, el("div", `meter-fill meter-${check.verdict}`));
    meter.firstChild.style.width = percent(check.confidence);
    meter.setAttribute("role", "img");
    meter.setAttribute("aria-label", `Confidence ${percent(check.confidence)}` +
      (check.threshold !== null ? `, threshold ${percent(check.threshold)}` : ""));
    if (check.threshold !== null) {
      const mark = el("div", "meter-threshold");
      mark.style.left = percent(check.threshold);
      mark.title = `Threshold ${percent(check.threshold)}: below it the verdict is "not sure"`;
      meter.append(mark);
    }

    const caption = el("p", "meter-caption", null, el("span", null, `Confidence ${percent(check.confidence)}`),
      el("span", null, check.threshold !== null ? `Threshold ${percent(check.threshold)}` : "No threshold"));

    const list = el("ul", "photo-results", null,
      ...check.photos.map((photo, i) => photoRow(photo, previewUrls[i])));
    const meta = el("p", "result-meta", `Check #${check.check_id} · model version ${check.model_version}`);
    result.replaceChildren(banner, facts, meter, caption, el("h3", "subheading", check.photos.length > 1 ? "Photos" : "Photo"), list, meta);
  }

  function fact(name, value, id) {
    const dd = el("dd", null, value);
    if (id) dd.id = `fact-${id}`;
    return el("div", "fact", null, el("dt", null, name), dd);
  }

  function photoRow(photo, url) {
    const img = el("img");
    if (url) img.src = url;
    img.alt = "";
    const bars = el("ul", "top-labels", null, ...photo.top.map((entry) => {
      const bar = el("span", "bar", null, el("span", "bar-fill"));
      bar.firstChild.style.width = percent(entry.probability);
      return el("li", null, null, el("span", "top-label", label(entry.label)), bar, el("span", "top-value", percent(entry.probability)));
    }));
    return el("li", "photo-result", null, img,
      el("div", "photo-detail", null, el("p", "photo-name", photo.filename), bars));
  }

  function showError(message) {
    live.textContent = message;
    const box = el("div", "error-box", null, el("span", "verdict-icon", "!"), el("p", null, message));
    box.setAttribute("role", "alert");
    result.replaceChildren(box);
  }

  start();
})();
