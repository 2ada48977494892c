"use strict";
// The review queue: GET /v1/reviews/queue, one check at a time, reviewed with buttons or keys
// (c confirm, r correct, o off-topic, s skip) through POST /v1/checks/ID/review.
(() => {
  const { api, label, percent, loadModel, el } = vitrina;
  const $ = (id) => document.getElementById(id);
  const item = $("review-item");
  const status = $("review-status");
  const category = $("review-category");
  let current = null;

  async function next() {
    const query = new URLSearchParams({ limit: 1, order: $("queue-order").value });
    if ($("queue-category").value.trim()) query.set("category", $("queue-category").value.trim());
    try {
      const [check] = (await (await api(`/v1/reviews/queue?${query}`)).json()).checks;
      current = check || null;
      item.hidden = !current;
      status.textContent = current ? "" : "Nothing left to review.";
      if (current) show(current);
    } catch (error) {
      status.textContent = error.message;
    }
  }

  function show(check) {
    const photos = $("review-photos");
    photos.replaceChildren();
    check.photos.forEach((photo) => {
      if (!photo.image_stored) return photos.append(el("span", "hash", `${photo.sha256.slice(0, 12)}… (not kept)`));
      const img = el("img", "review-photo");
      img.alt = `Photo ${photo.position + 1} of check ${check.id}`;
      photos.append(img);
      api(`/v1/checks/${check.id}/photos/${photo.position}`).then((r) => r.blob()).then((b) => { img.src = URL.createObjectURL(b); })
        .catch(() => { img.alt = "photo unavailable"; });
    });
    const unknown = check.unknown_score === null ? "" : `, unknown-photo score ${check.unknown_score.toFixed(2)}`;
    $("review-summary").textContent = `Check ${check.id}: declared ${label(check.declared)}, predicted ${label(check.predicted)} `
      + `(${check.verdict === "uncertain" ? "not sure" : check.verdict}${unknown}).`;
    $("review-top").replaceChildren(...(check.top || []).map((t) => el("li", null, `${label(t.label)} ${percent(t.prob)}`)));
    const trail = check.reviews.filter((r) => r.action !== "skip").map((r) => `${r.reviewer}: ${r.action}${r.category ? ` ${r.category}` : ""}`);
    $("review-trail").textContent = trail.length ? `${check.disagreement ? "Reviewers disagree. " : ""}So far: ${trail.join("; ")}` : "";
    category.value = "";
  }

  async function review(action, chosen) {
    if (!current) return;
    const body = action === "correct" ? { action, category: chosen } : { action };
    try {
      await api(`/v1/checks/${current.id}/review`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      status.textContent = `Check ${current.id}: ${action === "correct" ? `corrected to ${chosen}` : action.replace("_", "-")}.`;
      if (document.activeElement === category) category.blur();  // the keys act on the next check
      await next();
    } catch (error) {
      status.textContent = error.message;
    }
  }

  function correct() {
    if (!category.value.trim()) {
      category.focus();
      status.textContent = "Type the right category, then Enter.";
      return;
    }
    review("correct", category.value.trim());
  }

  $("review-confirm").addEventListener("click", () => review("confirm"));
  $("review-off-topic").addEventListener("click", () => review("off_topic"));
  $("review-skip").addEventListener("click", () => review("skip"));
  $("review-correct").addEventListener("click", correct);
  category.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      correct();
    } else if (event.key === "Escape") {
      category.blur();
    }
  });
  document.addEventListener("keydown", (event) => {
    const typing = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName);
    if (typing || event.ctrlKey || event.metaKey || event.altKey || !current) return;
    const actions = { c: () => review("confirm"), o: () => review("off_topic"), s: () => review("skip"), r: () => category.focus() };
    if (actions[event.key]) {
      event.preventDefault();
      actions[event.key]();
    }
  });
  $("queue-filters").addEventListener("change", next);
  $("queue-filters").addEventListener("submit", (event) => { event.preventDefault(); next(); });
  loadModel().then((model) => $("review-labels").replaceChildren(...model.labels.map((name) => {
    const option = el("option");
    option.value = name;
    return option;
  }))).catch(() => {});
  next();
})();
