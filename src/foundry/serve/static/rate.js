// The bake-off rating page: one prompt and one blinded answer at a time; every score is saved when given.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("t") || "";
  const $ = (id) => document.getElementById(id);
  let session = null, item = null, active = 0, saving = Promise.resolve(), commentTimer = null;

  async function api(method, path, body) {
    const res = await fetch(path, {
      method, headers: { "X-Rater-Token": token, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = { error: "the server sent an unreadable reply" }; }
    if (!res.ok) { const err = new Error(data.error || res.statusText); err.status = res.status; throw err; }
    return data;
  }

  function show(id) {
    for (const s of ["loading", "nothing", "rating", "done"]) $(s).classList.toggle("hidden", s !== id);
  }
  function notice(text) { $("notice").textContent = text || ""; $("notice").classList.toggle("hidden", !text); }

  function setProgress(done, total) {
    session.done = done; session.total = total;
    const pct = total ? Math.round((100 * done) / total) : 0;
    $("progress-fill").style.width = pct + "%";
    $("progress").setAttribute("aria-valuenow", String(pct));
    $("progress-label").textContent = `${done} of ${total} rated`;
  }

  function renderCriteria() {
    const box = $("criteria");
    box.innerHTML = "";
    session.criteria.forEach((c, i) => {
      const fs = document.createElement("fieldset");
      fs.className = "criterion" + (i === active ? " active" : "");
      fs.dataset.criterion = c.name;
      const legend = document.createElement("legend");
      legend.textContent = c.name.replace(/_/g, " ");
      fs.appendChild(legend);
      if (c.description) {
        const d = document.createElement("p");
        d.className = "description";
        d.textContent = c.description;
        fs.appendChild(d);
      }
      const scale = document.createElement("div");
      scale.className = "scale";
      scale.setAttribute("role", "group");
      scale.setAttribute("aria-label", c.name);
      const [lo, hi] = c.scale;
      const low = document.createElement("span"); low.className = "end"; low.textContent = "worst";
      scale.appendChild(low);
      for (let v = lo; v <= hi; v++) {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = String(v);
        b.dataset.value = String(v);
        b.setAttribute("aria-pressed", String(item.scores[c.name] === v));
        b.addEventListener("click", () => { active = i; score(c.name, v); });
        scale.appendChild(b);
      }
      const high = document.createElement("span"); high.className = "end"; high.textContent = "best";
      scale.appendChild(high);
      fs.appendChild(scale);
      fs.addEventListener("click", () => { if (active !== i) { active = i; markActive(); } });
      box.appendChild(fs);
    });
  }
  function markActive() {
    document.querySelectorAll("fieldset.criterion").forEach((fs, i) => fs.classList.toggle("active", i === active));
  }

  function renderItem() {
    $("position").textContent = `Answer ${item.index + 1} of ${session.total}`;
    $("prompt").textContent = (item.system ? `[system] ${item.system}\n\n` : "") + item.prompt;
    $("answer").textContent = item.answer;
    $("blind-id").textContent = `(${item.blind_id})`;
    $("comments").value = item.comments || "";
    $("back").disabled = item.index === 0;
    $("next").textContent = item.index === session.total - 1 ? "Finish" : "Next →";
    $("saved").textContent = "";
    active = Math.max(0, session.criteria.findIndex((c) => !(c.name in item.scores)));
    renderCriteria();
    show("rating");
  }

  function flushComment() {
    if (item && $("comments").value !== (item.comments || "")) {
      clearTimeout(commentTimer);
      save({ comments: $("comments").value });
    }
  }

  async function load(index) {
    flushComment();
    await saving;
    try {
      item = await api("GET", `/api/item/${index}`);
      renderItem();
      window.scrollTo(0, 0);
    } catch (e) { notice(e.message); }
  }

  // One change at a time, in order, each on the version the previous one returned.
  function save(change) {
    const run = async () => {
      const sent = item;
      try {
        const r = await api("PUT", "/api/rating", { blind_id: sent.blind_id, version: sent.version, ...change });
        if (item === sent) {
          item.version = r.rating.version; item.scores = r.rating.scores; item.comments = r.rating.comments;
        }
        setProgress(r.done, r.total);
        $("saved").textContent = "Saved";
        notice("");
      } catch (e) {
        notice(e.message);
        $("saved").textContent = "";
        if (e.status === 409 || e.status === 400) {  // show what the server holds
          if (item === sent) { item = await api("GET", `/api/item/${sent.index}`); renderItem(); }
        }
      }
    };
    saving = saving.then(run, run);
    return saving;
  }

  function score(name, value) {
    item.scores = { ...item.scores, [name]: value };
    renderCriteria();
    const next = session.criteria.findIndex((c) => !(c.name in item.scores));
    active = next >= 0 ? next : active;
    markActive();
    return save({ scores: { [name]: value } });
  }

  async function next() {
    flushComment();
    await saving;
    if (item.index < session.total - 1) return load(item.index + 1);
    const s = await api("GET", "/api/session");
    setProgress(s.done, s.total);
    if (s.finished) { finish(); return; }
    notice(`${s.total - s.done} answer(s) still need a score for every criterion; here is the first.`);
    return load(s.position);
  }
  function finish() {
    $("done-text").textContent = `All ${session.total} answers are rated. Thank you! Your ratings are saved; ` +
      "you can close this page.";
    show("done");
  }

  function keys(ev) {
    if (ev.target === $("comments")) { if (ev.key === "Escape") $("comments").blur(); return; }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || $("rating").classList.contains("hidden")) return;
    const c = session.criteria[active];
    if (/^[0-9]$/.test(ev.key) && c) {
      const v = Number(ev.key);
      if (v >= c.scale[0] && v <= c.scale[1]) { score(c.name, v); ev.preventDefault(); }
    } else if (ev.key === "ArrowDown") { active = Math.min(session.criteria.length - 1, active + 1); markActive(); ev.preventDefault(); }
    else if (ev.key === "ArrowUp") { active = Math.max(0, active - 1); markActive(); ev.preventDefault(); }
    else if (ev.key === "ArrowLeft") { if (item.index > 0) load(item.index - 1); ev.preventDefault(); }
    else if (ev.key === "ArrowRight" || ev.key === "Enter") { next(); ev.preventDefault(); }
    else if (ev.key === "c") { $("comments").focus(); ev.preventDefault(); }
  }

  async function start() {
    if (!token) { show(null); notice("This link has no rater token. Open the link you were given (it ends in ?t=…)."); return; }
    try { session = await api("GET", "/api/session"); }
    catch (e) { show(null); notice(e.message); return; }
    $("who").textContent = `rater: ${session.rater}`;
    setProgress(session.done, session.total);
    if (!session.criteria.length) { show("nothing"); return; }
    if (session.finished) { finish(); return; }
    load(session.position);
  }

  $("back").addEventListener("click", () => load(item.index - 1));
  $("next").addEventListener("click", next);
  $("review").addEventListener("click", () => load(0));
  $("comments").addEventListener("input", () => {
    clearTimeout(commentTimer);
    commentTimer = setTimeout(flushComment, 600);
  });
  $("comments").addEventListener("change", flushComment);
  document.addEventListener("keydown", keys);
  start();
})();
