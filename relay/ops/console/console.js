// The relay console's behaviour: refresh the live part, send the dead-letter actions.
// Loaded from /console/console.js (the page's Content-Security-Policy forbids inline script).
// The token typed into the page stays in this tab's sessionStorage and goes only into the
// Authorization header of the actions: never into a URL, never into the page.
"use strict";

(function () {
  const TOKEN_KEY = "relay-console-token";
  const live = document.getElementById("live");
  const result = document.getElementById("action-result");
  const tokenInput = document.getElementById("token");
  const actions = document.getElementById("actions");
  const refreshed = document.getElementById("refreshed");
  const every = Math.max(2, Number(refreshed.dataset.every) || 5) * 1000;
  let busy = false;

  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved && tokenInput) tokenInput.value = saved;
  if (tokenInput) {
    tokenInput.addEventListener("input", function () {
      sessionStorage.setItem(TOKEN_KEY, tokenInput.value);
    });
    tokenInput.addEventListener("change", function () { refresh(); });
  }

  function say(text, failed) {
    result.textContent = text;
    result.className = failed ? "failed" : "";
  }

  async function refresh() {
    try {
      // with the token, the dead letters' events are shown on a listener beyond loopback too
      const headers = {};
      const token = tokenInput ? tokenInput.value.trim() : "";
      if (token && actions.dataset.mode === "token") headers["Authorization"] = "Bearer " + token;
      const answer = await fetch("/console/fragment", { cache: "no-store", headers: headers });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      live.innerHTML = await answer.text();  // built and escaped by the relay
      refreshed.textContent = "updated " + new Date().toLocaleTimeString();
    } catch (err) {
      refreshed.textContent = "cannot reach the relay (" + err.message + "), retrying";
    }
  }

  async function act(path, body) {
    if (busy) return;
    const headers = { "Content-Type": "application/json", "X-Relay-Console": "1" };
    if (actions.dataset.mode === "token") {
      const token = tokenInput.value.trim();
      if (!token) {
        say("Type the token of ingest.http.auth_token_file first.", true);
        tokenInput.focus();
        return;
      }
      headers["Authorization"] = "Bearer " + token;
    }
    busy = true;
    say("working…", false);
    try {
      const answer = await fetch(path, {
        method: "POST", headers: headers, body: JSON.stringify(body), cache: "no-store",
      });
      const data = await answer.json();
      if (!answer.ok) {
        say(data.error || "refused: HTTP " + answer.status, true);
      } else if ("purged" in data) {
        say("Purged " + data.purged + " dead letter(s).", false);
      } else {
        const left = Object.entries(data.skipped || {});
        let text = "Replayed " + data.replayed + " dead letter(s) into the spool.";
        if (left.length) {
          text += " Left in place: " + left.map(function (e) { return "#" + e[0] + ": " + e[1]; }).join("; ");
        }
        say(text, left.length > 0 && data.replayed === 0);
      }
    } catch (err) {
      say("The relay did not answer: " + err.message, true);
    } finally {
      busy = false;
      await refresh();
    }
  }

  document.addEventListener("click", function (ev) {
    const button = ev.target.closest("button");
    if (!button || button.disabled) return;
    if (button.classList.contains("replay")) {
      act("/console/dead-letters/replay", { ids: [Number(button.dataset.id)] });
    } else if (button.id === "replay-all") {
      act("/console/dead-letters/replay", { all: true });
    } else if (button.id === "purge") {
      act("/console/dead-letters/purge", { older_than: document.getElementById("older-than").value.trim() });
    }
  });

  setInterval(function () { if (!busy && !document.hidden) refresh(); }, every);
  refreshed.textContent = "updates every " + every / 1000 + " s";
  if (saved) refresh();  // a token kept from before in this tab: show what it may see
})();
