// Refit's pages as one app: the navigation, the session, and a fetch that sends a person to
// sign in when the session is missing or expired. Text goes in with textContent only.
const $ = (id) => document.getElementById(id);
const PAGES = [["/", "Console"], ["/try", "Try"], ["/retrain", "Retrain"], ["/label", "Label"], ["/docs", "API"]];

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  if (cls) node.className = cls;
  return node;
}

function link(href, text, external) {
  const a = el("a", text); a.href = href;
  if (external) { a.target = "_blank"; a.rel = "noopener"; }
  return a;
}

function signIn() {
  location.href = `/signin?next=${encodeURIComponent(location.pathname + location.search)}`;
}

async function api(url, options = {}) {
  const response = await fetch(url, {credentials: "same-origin", ...options});
  if (response.status === 401) { signIn(); throw new Error("not signed in"); }
  return response;
}

function upload(url, form, progress) {  // a POST whose upload reports progress (0-100)
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) progress(100 * e.loaded / e.total); };
    xhr.onload = () => {
      if (xhr.status === 401) { signIn(); reject(new Error("not signed in")); return; }
      let body; try { body = JSON.parse(xhr.responseText); } catch { body = {error: xhr.responseText}; }
      resolve({ok: xhr.status < 400, status: xhr.status, body});
    };
    xhr.onerror = () => reject(new Error("the upload failed: the server did not answer"));
    xhr.send(form);
  });
}

function navigation() {
  const nav = el("nav"); nav.setAttribute("aria-label", "Refit");
  const here = location.pathname;
  for (const [href, name] of PAGES) {
    const a = link(href, name);
    if (href === here) a.setAttribute("aria-current", "page");
    nav.append(a);
  }
  const out = el("form"); out.method = "post"; out.action = "/signout"; out.className = "signout";
  const button = el("button", "Sign out"); button.type = "submit"; out.append(button);
  nav.append(out);
  document.body.prepend(nav);
}

document.addEventListener("DOMContentLoaded", navigation);
