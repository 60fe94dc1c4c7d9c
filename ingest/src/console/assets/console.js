// foldcache console: keeps the parts of a page marked data-live up to date
// by fetching the same page every two seconds (no build step, no library).
// Without JavaScript the pages still work; they reload every few seconds.
(function () {
  "use strict";
  var EVERY = 2000;
  var busy = false;

  function checked(root) {
    var out = {};
    root.querySelectorAll("input[type=checkbox]").forEach(function (c) {
      if (c.checked) out[c.name + "=" + c.value] = true;
    });
    return out;
  }

  function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    fetch(location.href, { credentials: "same-origin", cache: "no-store", headers: { Accept: "text/html" } })
      .then(function (r) {
        if (r.redirected || !r.ok) throw new Error("status " + r.status);
        return r.text();
      })
      .then(function (text) {
        var doc = new DOMParser().parseFromString(text, "text/html");
        document.querySelectorAll("[data-live]").forEach(function (el) {
          var fresh = doc.getElementById(el.id);
          if (!fresh || fresh.innerHTML === el.innerHTML) return;
          var keep = checked(el);
          el.innerHTML = fresh.innerHTML;
          el.querySelectorAll("input[type=checkbox]").forEach(function (c) {
            if (keep[c.name + "=" + c.value]) c.checked = true;
          });
        });
        document.documentElement.removeAttribute("data-stale");
      })
      .catch(function () {
        // Signed out, or ingest is gone: say so once, keep trying.
        document.documentElement.setAttribute("data-stale", "true");
      })
      .then(function () { busy = false; });
  }

  setInterval(refresh, EVERY);
  document.addEventListener("visibilitychange", refresh);
})();
