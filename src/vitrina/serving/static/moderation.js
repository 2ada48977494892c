"use strict";
// The moderators' page: GET /v1/checks?verdict=..., newest first, with paging.
(() => {
  const { api, apiKeyField, label, percent, loadModel, el } = vitrina;
  const PAGE = 50;
  const filters = document.getElementById("filters");
  const verdict = document.getElementById("verdict");
  const rows = document.getElementById("rows");
  const status = document.getElementById("status");
  const count = document.getElementById("count");
  const more = document.getElementById("more");
  const keyField = apiKeyField(reload);
  const VERDICT_NAMES = { match: "Match", mismatch: "Mismatch", uncertain: "Not sure" };
  const timeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
  let before = null;
  let shown = 0;

  async function load(reset) {
    if (reset) {
      before = null;
      shown = 0;
      rows.replaceChildren();
    }
    const query = new URLSearchParams({ limit: PAGE });
    if (verdict.value) query.set("verdict", verdict.value);
    if (before !== null) query.set("before", before);
    status.textContent = "Loading…";
    try {
      const page = await (await api(`/v1/checks?${query}`)).json();
      page.checks.forEach((check) => rows.append(row(check)));
      shown += page.checks.length;
      before = page.next_before;
      more.hidden = before === null;
      count.textContent = shown ? `${shown} check${shown === 1 ? "" : "s"} shown` : "";
      status.textContent = shown ? "" : "No such check recorded yet.";
    } catch (error) {
      if (error.status === 401) keyField.ask();
      status.textContent = error.message;
    }
  }

  function row(check) {
    const time = el("td", "num", timeFormat.format(new Date(check.time)));
    const broad = check.declared_level === "coarse" ? el("span", "field-hint", " (broad)") : null;
    const suggested = check.suggestion && check.suggestion !== check.predicted
      ? el("span", "field-hint", ` suggested ${label(check.suggestion)}${check.suggestion_level === "coarse" ? " (broad)" : ""}`) : null;
    const pair = el("td", null, null, el("span", null, label(check.declared)), broad, el("span", "arrow", "→"),
      el("strong", null, label(check.predicted)), suggested);
    const pill = el("span", `pill pill-${check.verdict}`, VERDICT_NAMES[check.verdict]);
    return el("tr", null, null, time, photoCell(check), pair, el("td", "num", percent(check.confidence)), el("td", null, null, pill),
      el("td", "hash", check.model_version));
  }

  function photoCell(check) {
    const cell = el("td");
    const photo = check.photos[0];
    if (!photo) return cell;
    if (!photo.image_stored) {
      const hash = el("span", "hash", `${photo.sha256.slice(0, 12)}…`);
      hash.title = `SHA-256 ${photo.sha256} (photos are kept as --store-images says: mismatch and uncertain checks by default)`;
      cell.append(hash);
    } else {
      const img = el("img", "thumb");
      img.alt = `Photo of check ${check.id}, predicted ${label(photo.predicted)}`;
      cell.append(img);
      // Fetched rather than linked so that the API key is sent with it.
      api(`/v1/checks/${check.id}/photos/${photo.position}`)
        .then((response) => response.blob())
        .then((blob) => { img.src = URL.createObjectURL(blob); })
        .catch(() => { img.alt = "photo unavailable"; });
    }
    if (check.photos.length > 1) cell.append(el("span", "hash", ` +${check.photos.length - 1}`));
    return cell;
  }

  function reload() {
    loadModel().catch(() => {});
    load(true);
  }

  filters.addEventListener("submit", (event) => {
    event.preventDefault();
    load(true);
  });
  verdict.addEventListener("change", () => load(true));
  more.addEventListener("click", () => load(false));
  reload();
})();
