/* Outside records: keep only each partner's newest progress row while the page streams in.
   Without this file (no JavaScript) every event stays listed, which reads just as well. */
(function () {
  "use strict";
  var tbody = document.currentScript && document.currentScript.parentNode;
  if (!tbody || tbody.tagName !== "TBODY") { return; }
  function tidy() {
    var seen = {};
    var rows = tbody.querySelectorAll("tr[data-partner]");
    for (var i = rows.length - 1; i >= 0; i--) {
      var key = rows[i].getAttribute("data-partner");
      if (seen[key]) { rows[i].classList.add("superseded"); } else { seen[key] = true; }
    }
  }
  new MutationObserver(tidy).observe(tbody, { childList: true });
  tidy();
}());
