// Refresh the live parts of the page (state, running canary) by polling a fragment:
// no framework, no external script. The interval is web.refresh_seconds.
(function () {
  var body = document.body;
  var url = body.getAttribute("data-live");
  var every = parseFloat(body.getAttribute("data-refresh") || "0");
  if (!url || !(every > 0)) { return; }
  function tick() {
    fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html === null) { return; }
      var holder = document.createElement("div");
      holder.innerHTML = html;
      Array.from(holder.children).forEach(function (fresh) {
        var old = fresh.id && document.getElementById(fresh.id);
        if (old) { old.replaceWith(fresh); }
      });
      body.setAttribute("data-updated", String(Date.now()));
    }).catch(function () {}).then(function () { setTimeout(tick, every * 1000); });
  }
  setTimeout(tick, every * 1000);
})();
