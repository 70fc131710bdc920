// The chat page of `foundry serve`: streams from the server's own /v1/chat/completions (server-sent events).
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let info = null, history = [], controller = null;

  function notice(text) { $("notice").textContent = text || ""; $("notice").classList.toggle("hidden", !text); }
  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = $("api_key").value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("span");
    who.className = "role";
    who.textContent = role === "assistant" ? info.model : role;
    const body = document.createElement("span");
    body.className = "content";
    body.textContent = text;
    div.append(who, body);
    $("conversation").appendChild(div);
    div.scrollIntoView({ block: "end" });
    return div;
  }

  function showPassages(div, passages) {
    if (!passages.length) return;
    const list = document.createElement("ol");
    list.className = "passages";
    list.setAttribute("aria-label", "cited passages");
    for (const p of passages) {
      const li = document.createElement("li");
      const src = document.createElement("strong");
      src.textContent = `[${p.source}] `;
      li.append(src, document.createTextNode(p.text));
      list.appendChild(li);
    }
    div.appendChild(list);
  }

  function numberOr(id, fallback) {
    const v = $(id).value.trim();
    return v === "" ? fallback : Number(v);
  }

  function request() {
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    const body = { model: info.model, messages, stream: true, temperature: numberOr("temperature", 0.7),
                   top_p: numberOr("top_p", null), max_tokens: numberOr("max_tokens", 256) };
    const topK = numberOr("top_k", null), seed = numberOr("seed", null);
    if (topK !== null) body.top_k = topK;
    if (seed !== null) body.seed = seed;
    const stop = $("stop_words").value.split(",").map((s) => s.trim()).filter(Boolean);
    if (stop.length) body.stop = stop;
    return body;
  }

  async function send(text) {
    notice("");
    history.push({ role: "user", content: text });
    bubble("user", text);
    const div = bubble("assistant", "");
    div.dataset.state = "streaming";
    const content = div.querySelector(".content");
    let answer = "";
    if (info.retrieval) {
      fetch("/ui/passages", { method: "POST", headers: headers(), body: JSON.stringify({ query: text }) })
        .then((r) => (r.ok ? r.json() : { passages: [] })).then((r) => showPassages(div, r.passages))
        .catch(() => {});
    }
    controller = new AbortController();
    $("send").disabled = true;
    $("stop").classList.remove("hidden");
    try {
      const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(),
        body: JSON.stringify(request()), signal: controller.signal });
      if (!res.ok) {
        let msg = res.statusText;
        try { msg = (await res.json()).error.message; } catch (e) { /* keep the status text */ }
        throw new Error(`${res.status}: ${msg}`);
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ")) continue;
            const data = line.slice(6);
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            if (chunk.error) throw new Error(chunk.error.message);
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (delta && delta.content) { answer += delta.content; content.textContent = answer; }
          }
        }
      }
      history.push({ role: "assistant", content: answer });
      div.dataset.state = "done";
    } catch (e) {
      div.dataset.state = "error";
      if (e.name === "AbortError") { history.push({ role: "assistant", content: answer }); div.dataset.state = "stopped"; }
      else { history.pop(); div.remove(); bubble("error", e.message); }
    } finally {
      controller = null;
      $("send").disabled = false;
      $("stop").classList.add("hidden");
      $("input").focus();
    }
  }

  $("compose").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("compose").requestSubmit(); }
  });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("clear").addEventListener("click", () => { history = []; $("conversation").innerHTML = ""; notice(""); });
  $("api_key").addEventListener("change", () => sessionStorage.setItem("foundry-key", $("api_key").value));

  fetch("/ui/info").then((r) => r.json()).then((i) => {
    info = i;
    $("model").textContent = i.model;
    document.title = `${i.model} · foundry chat`;
    $("grounding").textContent = i.retrieval ? `grounded in a retrieval index (${i.passages} passage${i.passages === 1 ? "" : "s"} per question)` : "";
    $("max_tokens").max = String(i.max_tokens_limit);
    $("max_tokens").value = String(Math.min(256, i.max_tokens_limit));
    $("limits").textContent = `Context ${i.context} tokens; at most ${i.max_tokens_limit} new tokens per answer.`;
    if (i.needs_key) { $("key-box").classList.remove("hidden"); $("api_key").value = sessionStorage.getItem("foundry-key") || ""; }
  }).catch(() => notice("cannot reach the server"));
})();
