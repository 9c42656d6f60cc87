// Passerelle's status page: fetches /status.json every five seconds and draws it. Same
// origin only (the page's Content-Security-Policy allows nothing else); text goes in as text.
"use strict";

const WORDS = {
  en: {
    loading: "Loading…", chart: "Requests and refusals per minute, last hour", flows: "Flows",
    flow: "Flow", allowed_hour: "Allowed (1 h)", refused_hour: "Refused (1 h)", bytes_hour: "Bytes (1 h)",
    allowed_start: "Allowed (since start)", refused_start: "Refused (since start)", tunnels: "Open tunnels",
    parents: "Parent proxies", parent: "Parent", state: "State", scheme: "Scheme", last_handshake: "Last handshake",
    backoff: "Back-off left", refusals: "Last refusals", time: "Time (UTC)", client: "Client", target: "Target",
    reason: "Reason", id: "Request id", config: "Configuration", digest: "Digest", by: "Asked by",
    outcome: "Outcome", accepted: "accepted", refused: "refused", none: "none", allowed: "allowed",
    no_parents: "No parent proxy configured: allowed flows go direct.", no_refusals: "No refusal since start.",
    no_reloads: "No reload since start.",
    forwarders: "Audit forwarding", collector: "Collector", format: "Format", waiting: "Waiting",
    oldest: "Oldest waiting", delivered: "Delivered", not_forwarded: "Not forwarded (spool full)",
    failed_hour: "Failed (1 h)", parent_failures: "Recent failures",
    failures: "Last failures (allowed, but not through)", why: "Why", no_failures: "No failure since start.",
    last_error: "Last error", no_forwarders: "The audit is not forwarded: it stays on this host.",
    connected: "connected", disconnected: "disconnected", datagrams: "datagrams", ago: "ago",
    summary: (s) => `${s.version} (${s.commit}) · up ${s.uptime} · ${s.connections} client connections · ${s.tunnels} open tunnels`,
    capacity: "Visio capacity",
    capacity_line: (c) => `${c.visios} simultaneous visio(s) × 1 Mbit/s = ${c.visios} Mbit/s` +
      (c.uplink_mbit ? ` of a ${c.uplink_mbit} Mbit/s uplink` : "") +
      (c.workstations ? ` · ${c.workstations} workstations need ${c.synchronous_mbit} Mbit/s in synchronous use` : ""),
    over: " — more than the uplink: the visio will suffer",
    no_uplink: " (set site.uplink_mbit to compare it with the site's uplink)",
    no_flow: "(no flow: refused)",
    states: { up: "up", down: "down", backoff: "backing off" },
  },
  fr: {
    loading: "Chargement…", chart: "Demandes et refus par minute, dernière heure", flows: "Flux",
    flow: "Flux", allowed_hour: "Autorisées (1 h)", refused_hour: "Refusées (1 h)", bytes_hour: "Octets (1 h)",
    allowed_start: "Autorisées (depuis le démarrage)", refused_start: "Refusées (depuis le démarrage)", tunnels: "Tunnels ouverts",
    parents: "Proxys de l'établissement", parent: "Proxy", state: "État", scheme: "Authentification", last_handshake: "Dernière authentification",
    backoff: "Pause restante", refusals: "Derniers refus", time: "Heure (UTC)", client: "Poste", target: "Destination",
    reason: "Raison", id: "Identifiant", config: "Configuration", digest: "Empreinte", by: "Demandé par",
    outcome: "Résultat", accepted: "acceptée", refused: "refusée", none: "aucune", allowed: "autorisées",
    no_parents: "Aucun proxy parent configuré : les flux autorisés sortent en direct.", no_refusals: "Aucun refus depuis le démarrage.",
    no_reloads: "Aucun rechargement depuis le démarrage.",
    forwarders: "Transmission du journal d'audit", collector: "Collecteur", format: "Format", waiting: "En attente",
    oldest: "Plus ancien en attente", delivered: "Transmis", not_forwarded: "Non transmis (file pleine)",
    failed_hour: "En échec (1 h)", parent_failures: "Échecs récents",
    failures: "Derniers échecs (autorisées, mais pas abouties)", why: "Pourquoi", no_failures: "Aucun échec depuis le démarrage.",
    last_error: "Dernière erreur", no_forwarders: "Le journal d'audit n'est pas transmis : il reste sur cette machine.",
    connected: "connecté", disconnected: "déconnecté", datagrams: "datagrammes", ago: "il y a",
    summary: (s) => `${s.version} (${s.commit}) · en service depuis ${s.uptime} · ${s.connections} connexions de postes · ${s.tunnels} tunnels ouverts`,
    capacity: "Capacité visio",
    capacity_line: (c) => `${c.visios} visio(s) simultanée(s) × 1 Mbit/s = ${c.visios} Mbit/s` +
      (c.uplink_mbit ? ` sur un lien de ${c.uplink_mbit} Mbit/s` : "") +
      (c.workstations ? ` · ${c.workstations} postes demandent ${c.synchronous_mbit} Mbit/s en usage synchrone` : ""),
    over: " — plus que le lien : la visio en souffrira",
    no_uplink: " (renseigner site.uplink_mbit pour comparer au lien du site)",
    no_flow: "(aucun flux : refusées)",
    states: { up: "disponible", down: "injoignable", backoff: "en pause" },
  },
};

const lang = document.documentElement.lang === "fr" ? "fr" : "en";
const w = WORDS[lang];

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fill(id, rows, render, empty) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren();
  if (rows.length === 0 && empty) {
    const tr = document.createElement("tr");
    cell(tr, w[empty], "empty").colSpan = document.querySelectorAll(`#${id} th`).length;
    body.appendChild(tr);
  }
  for (const r of rows) {
    const tr = document.createElement("tr");
    render(tr, r);
    body.appendChild(tr);
  }
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

const SVG = "http://www.w3.org/2000/svg";

function chart(perMinute) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("id", "per-minute");
  svg.setAttribute("viewBox", "0 0 600 140");
  svg.setAttribute("preserveAspectRatio", "none");
  const most = Math.max(1, ...perMinute.map(([, a, r]) => a + r));
  const step = 600 / perMinute.length;
  perMinute.forEach(([minute, allowed, refused], i) => {
    const g = document.createElementNS(SVG, "g");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${minute}: ${allowed} ${w.allowed}, ${refused} ${w.refused}`;
    g.appendChild(title);
    const ha = (allowed / most) * 130, hr = (refused / most) * 130;
    for (const [y, h, color, kind] of [[140 - ha, ha, "#2f6f4f", "allowed"], [140 - ha - hr, hr, "#b3261e", "refused"]]) {
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", (i * step + 1).toFixed(1));
      rect.setAttribute("y", y.toFixed(1));
      rect.setAttribute("width", Math.max(1, step - 2).toFixed(1));
      rect.setAttribute("height", h.toFixed(1));
      rect.setAttribute("fill", color);
      rect.setAttribute("class", kind);
      g.appendChild(rect);
    }
    svg.appendChild(g);
  });
  document.getElementById("chart").replaceChildren(svg);
}

function render(s) {
  document.getElementById("summary").textContent = w.summary(s);
  chart(s.per_minute);
  fill("flows", s.flows, (tr, f) => {
    cell(tr, f.flow === "none" ? w.no_flow : f.flow);
    cell(tr, f.last_hour.allowed, "num");
    cell(tr, f.last_hour.refused, "num");
    cell(tr, f.last_hour.failed, f.last_hour.failed ? "num warn" : "num");
    cell(tr, bytes(f.last_hour.bytes_up + f.last_hour.bytes_down), "num");
    cell(tr, f.since_start.allowed, "num");
    cell(tr, f.since_start.refused, "num");
    cell(tr, f.tunnels, "num");
  });
  fill("parents", s.parents, (tr, p) => {
    cell(tr, p.url);
    cell(tr, w.states[p.state] || p.state, `state-${p.state}`);
    cell(tr, p.scheme || w.none);
    cell(tr, p.last_handshake || "—");
    cell(tr, p.backoff_seconds ? `${p.backoff_seconds} s` : "—");
    cell(tr, p.failures ? `${p.failures} (${p.last_failure.reason})` : "0", p.failures ? "warn" : "");
  }, "no_parents");
  fill("failures", s.failures, (tr, f) => {
    cell(tr, f.ts.replace("T", " ").replace("Z", ""));
    cell(tr, f.client);
    cell(tr, f.target);
    cell(tr, f.flow);
    cell(tr, `${lang === "fr" ? f.words_fr : f.words_en} (${f.reason})`);
    cell(tr, f.id);
  }, "no_failures");
  fill("forwarders", s.forwarders, (tr, f) => {
    cell(tr, f.name);
    cell(tr, f.format);
    const state = f.connected === null ? w.datagrams : (f.connected ? w.connected : w.disconnected);
    cell(tr, state, f.connected === false ? "warn" : "");
    cell(tr, String(f.waiting), f.waiting > 0 && !f.connected ? "warn" : "");
    cell(tr, f.oldest_age_s === null ? "—" : `${f.oldest_age_s} s`);
    cell(tr, String(f.delivered));
    const lost = f.refused + f.dropped + f.lost;
    cell(tr, String(lost), lost > 0 ? "warn" : "");
    cell(tr, f.last_error ? `${f.last_error} (${w.ago} ${f.last_error_age_s} s)` : "—");
  }, "no_forwarders");
  fill("refusals", s.refusals, (tr, r) => {
    cell(tr, r.ts.replace("T", " ").replace("Z", ""));
    cell(tr, r.client);
    cell(tr, r.target);
    cell(tr, r.reason);
    cell(tr, r.id);
  }, "no_refusals");
  document.getElementById("digest").textContent = s.digest;
  fill("reloads", s.reloads, (tr, r) => {
    cell(tr, r.ts.replace("T", " ").replace("Z", ""));
    cell(tr, r.by);
    cell(tr, r.accepted ? w.accepted : w.refused, r.accepted ? "" : "warn");
  }, "no_reloads");
  const section = document.getElementById("capacity-section");
  if (s.capacity) {
    section.hidden = false;
    const p = document.getElementById("capacity");
    p.textContent = w.capacity_line(s.capacity) + (s.capacity.over_uplink ? w.over : "") +
      (s.capacity.uplink_mbit ? "" : w.no_uplink);
    p.className = s.capacity.over_uplink ? "warn" : "";
  }
  document.body.dataset.loaded = "yes";
  // Whether the page fits its window without scrolling sideways (the layout tests read it).
  const root = document.documentElement;
  document.body.dataset.fits = root.scrollWidth <= root.clientWidth ? "yes" : "no";
}

async function refresh() {
  try {
    const answer = await fetch("/status.json", { cache: "no-store" });
    if (answer.ok) render(await answer.json());
  } catch (e) {
    document.getElementById("summary").textContent = String(e);
  }
}

for (const el of document.querySelectorAll("[data-i18n]")) {
  const text = w[el.dataset.i18n];
  if (typeof text === "string") el.textContent = text;
}
refresh();
setInterval(refresh, 5000);
