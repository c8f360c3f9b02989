// The inbox's live update, the desk's one script (served only with the inbox, nonce-bound).
// Every few seconds it fetches this same inbox page (same filters) and, when the cases or the
// title changed, puts the new rows, counts and title in place. It never reloads the page, so
// focus, scroll and half-typed filters stay as they are. Its requests are marked passive: they
// do not keep the officer's session alive (an open inbox still logs out when idle).
"use strict";
(function () {
  var EVERY = 4000;
  var PARTS = ["feed-status", "case-count"];
  function rows(doc) {
    var body = doc.querySelector("table.cases tbody");
    return body ? body.innerHTML : "";
  }
  function tick() {
    fetch(window.location.href, {credentials: "same-origin", redirect: "manual",
                                 headers: {"X-CPCP-Passive": "1"}})
      .then(function (answer) {
        // Logged out (a redirect to the login page) or any trouble: stop; a reload shows why.
        if (answer.type === "opaqueredirect" || !answer.ok) { throw new Error("stop"); }
        return answer.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        var before = rows(document), after = rows(fresh);
        PARTS.forEach(function (id) {
          var old = document.getElementById(id), now = fresh.getElementById(id);
          if (old && now) { old.className = now.className; old.innerHTML = now.innerHTML; }
        });
        if (after !== before) {
          document.querySelector("table.cases tbody").innerHTML = after;
          var news = document.getElementById("live-news");
          if (news) { news.textContent = news.getAttribute("data-new"); }
        }
        document.title = fresh.title;
        window.setTimeout(tick, EVERY);
      })
      .catch(function () { /* stopped: the page stays as it is */ });
  }
  window.setTimeout(tick, EVERY);
})();
