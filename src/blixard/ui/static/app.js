// Blixard web UI: progressive enhancement only; every page works without it.
// Live regions ([data-live-region]) refresh when /api/tofu/events reports a change to their
// workspace; a run's log ([data-follow]) streams over server-sent events.

const liveStatus = () => document.getElementById("live-status");

function announce(text) {
  const status = liveStatus();
  if (status) status.textContent = text;
}

function workspaceMatches(region, workspace) {
  const wanted = region.dataset.liveWs;
  return wanted === "*" || wanted === workspace;
}

let refreshTimer = null;

async function refreshRegions() {
  const response = await fetch(location.href, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const region of document.querySelectorAll("[data-live-region]")) {
    if (region.contains(document.activeElement) && document.activeElement !== document.body) continue;
    const replacement = fresh.getElementById(region.id);
    if (replacement) region.replaceWith(document.importNode(replacement, true));
  }
  announce("Updated " + new Date().toLocaleTimeString());
}

function scheduleRefresh() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refreshRegions, 250);
}

function followChanges() {
  const regions = document.querySelectorAll("[data-live-region]");
  if (!regions.length || !window.EventSource) return;
  const source = new EventSource("/api/tofu/events");
  const onEvent = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    for (const region of document.querySelectorAll("[data-live-region]")) {
      if (workspaceMatches(region, event.workspace)) { scheduleRefresh(); return; }
    }
  };
  for (const kind of ["lock", "version", "workspace", "run"]) source.addEventListener(kind, onEvent);
  source.addEventListener("lost", scheduleRefresh);  // fell behind: re-read everything
  // Sent once the server listens: every later change reaches this page.
  source.addEventListener("ready", () => { document.body.dataset.live = "connected"; });
  source.addEventListener("error", () => { document.body.dataset.live = "reconnecting"; });
  window.addEventListener("pagehide", () => source.close());
}

function followLog() {
  const log = document.querySelector("pre[data-follow]");
  if (!log || !window.EventSource) return;
  const source = new EventSource(log.dataset.follow);
  let first = true;
  source.addEventListener("log", (message) => {
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    log.append(JSON.parse(message.data));
    if (atBottom) log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("status", (message) => {
    const value = JSON.parse(message.data).status;
    const current = document.getElementById("run-status");
    if (current && current.textContent !== value) {
      current.textContent = value;
      current.className = "badge status-" + value;
      if (!first) {
        announce("Run status: " + value);
        // The plan, its buttons and the facts depend on the status: fetch them afresh.
        scheduleRefreshOf(["plan-region", "run-facts"]);
      }
    }
    first = false;
  });
  source.addEventListener("end", () => {
    source.close();
    scheduleRefreshOf(["plan-region", "run-facts"]);
  });
  window.addEventListener("pagehide", () => source.close());
}

async function scheduleRefreshOf(ids) {
  const response = await fetch(location.pathname, { credentials: "same-origin", cache: "no-store" });
  if (!response.ok) return;
  const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
  for (const id of ids) {
    const old = document.getElementById(id);
    const replacement = fresh.getElementById(id);
    if (old && replacement) old.replaceWith(document.importNode(replacement, true));
    else if (old) old.remove();
  }
}

function confirmations() {
  document.addEventListener("submit", (event) => {
    const button = event.submitter;
    const question = button && button.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  });
}

function copyButtons() {
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source) return;
    try {
      await navigator.clipboard.writeText(source.textContent.trim());
      button.textContent = "Copied";
    } catch {
      const range = document.createRange();
      range.selectNodeContents(source);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Selected: press Ctrl+C";
    }
    announce(button.textContent);
  });
}

confirmations();
copyButtons();
followChanges();
followLog();
