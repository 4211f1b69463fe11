// vidfuse search page: one column per loaded run, the same query sent to each side by side.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
let runs = [];

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function mean(values) {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : 0;
}

function bar(kind, label, value, title) {
  const row = el("div", `bar ${kind}`);
  row.title = title;
  row.append(el("span", "label", label));
  const track = el("span", "track");
  const fill = el("span", "fill");
  fill.style.display = "block";
  fill.style.width = `${Math.round(Math.max(0, Math.min(1, value)) * 100)}%`;
  track.append(fill);
  row.append(track, el("span", "value", value.toFixed(2)));
  return row;
}

function frameBars(weights, title) {
  const box = el("div", "frames");
  box.title = title;
  // half height = a uniform weight (1/T), full height = twice that or more
  for (const w of weights) {
    const b = el("div");
    b.style.height = `${Math.round(Math.min(1, (w * weights.length) / 2) * 100)}%`;
    b.title = w.toFixed(3);
    box.append(b);
  }
  return box;
}

function playInPlace(card, result) {
  const media = $(".media", card);
  if (!result.media_url || $("video", media)) return;
  const video = el("video");
  Object.assign(video, { src: result.media_url, controls: true, autoplay: true, muted: true, loop: true, playsInline: true });
  video.addEventListener("error", () => {
    media.replaceChildren(el("div", "unavailable", "this browser cannot play the video file"));
  });
  media.replaceChildren(video);
  video.play().catch(() => {});
}

function card(result) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  node.dataset.videoId = result.video_id;
  $(".rank", node).textContent = `#${result.rank}`;
  $(".vid", node).textContent = result.video_id;
  $(".score", node).textContent = result.score.toFixed(4);
  const media = $(".media", node);
  if (result.thumbnails_url) {
    // a poster (one tile of the strip, shown large) above the strip of every sampled frame
    const poster = el("div", "poster");
    const img = el("img", "strip");
    img.alt = `frames of ${result.video_id}`;
    img.addEventListener("load", () => {
      const n = Math.max(1, result.thumbnail_tiles);
      const weights = result.two_stage ? result.two_stage.frame_attention : [];
      const tile = weights.length === n ? weights.indexOf(Math.max(...weights)) : Math.floor((n - 1) / 2);
      poster.style.aspectRatio = `${img.naturalWidth / n} / ${img.naturalHeight}`;
      poster.style.backgroundImage = `url("${result.thumbnails_url}")`;
      poster.style.backgroundSize = `${n * 100}% 100%`;
      poster.style.backgroundPosition = `${n > 1 ? (tile / (n - 1)) * 100 : 0}% 0`;
    });
    img.addEventListener("error", () => media.replaceChildren(el("div", "unavailable", "video not available")));
    img.src = result.thumbnails_url;
    media.append(poster, img);
  } else {
    media.append(el("div", "unavailable", "video not available"));
  }
  const bars = $(".bars", node);
  const att = result.attention;
  if (att) {
    for (const [name, w] of Object.entries(att.video)) bars.append(bar("video", `video ${name}`, mean(w), `per head: ${w.map((x) => x.toFixed(2)).join(" ")}`));
    for (const [name, w] of Object.entries(att.text)) bars.append(bar("text", `text ${name}`, mean(w), `per head: ${w.map((x) => x.toFixed(2)).join(" ")}`));
    for (const [name, w] of Object.entries(att.frames || {})) bars.append(frameBars(w, `${name} frame weights`));
  }
  const two = result.two_stage;
  if (two) {
    bars.append(el("div", "stages", `gist ${two.gist_score.toFixed(4)} → full ${two.full_score.toFixed(4)}`));
    bars.append(frameBars(two.frame_attention, `frames the relevance level attended to (${two.frame_feature})`));
  }
  node.addEventListener("click", () => playInPlace(node, result));
  return node;
}

function columns() {
  const main = $("#columns");
  main.replaceChildren();
  for (const run of runs) {
    const col = el("section", "column");
    col.dataset.run = run.name;
    col.append(el("h2", "", run.name));
    col.append(el("div", "info", `${run.head} · ${run.count} videos (${run.split || "?"}) · ${run.factory}`));
    col.append(el("div", "latency"), el("div", "grid"));
    main.append(col);
  }
}

async function searchRun(run, q, k) {
  const col = $(`.column[data-run="${CSS.escape(run.name)}"]`);
  const grid = $(".grid", col);
  const started = performance.now();
  const url = `/api/search?${new URLSearchParams({ q, k, run: run.name })}`;
  const response = await fetch(url);
  const body = await response.json();
  const total = performance.now() - started;
  if (!response.ok) {
    const detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail;
    grid.replaceChildren(el("div", "error", detail));
    $(".latency", col).textContent = "";
    return;
  }
  $(".latency", col).textContent = `${body.results.length} results · ${total.toFixed(1)} ms (server ${body.took_ms.toFixed(1)} ms)`;
  grid.replaceChildren(...body.results.map(card));
}

async function search(event) {
  event.preventDefault();
  const q = $("#query").value.trim();
  if (!q) return;
  const k = $("#k").value || 12;
  $("#status").textContent = "searching…";
  await Promise.all(runs.map((run) => searchRun(run, q, k)));
  $("#status").textContent = "";
}

async function start() {
  const response = await fetch("/api/runs");
  runs = await response.json();
  columns();
  $("#search-form").addEventListener("submit", search);
  document.body.dataset.ready = "true";
}

start().catch((err) => { $("#status").textContent = `cannot reach the server: ${err}`; });
