// The operator console's only script: the queue refreshes itself without reloading the page.
"use strict";

(function () {
  var REFRESH_MS = 5000;
  var rows = document.getElementById("queue-rows");
  if (!rows) {
    return;
  }
  var stamp = document.getElementById("refreshed");

  function refresh() {
    fetch(rows.getAttribute("data-src"), {
      credentials: "same-origin",
      cache: "no-store",
      headers: { Accept: "text/html" },
    })
      .then(function (response) {
        if (response.status === 401) {
          // Signed out or the session expired: the page itself leads to the sign-in form.
          window.location.reload();
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html !== null) {
          rows.innerHTML = html;
          if (stamp) {
            stamp.textContent = "(обновлено в " + new Date().toLocaleTimeString("ru-RU") + ")";
          }
        }
      })
      .catch(function () {
        if (stamp) {
          stamp.textContent = "(нет связи с сервером, повторю через 5 секунд)";
        }
      });
  }

  window.setInterval(refresh, REFRESH_MS);
})();
