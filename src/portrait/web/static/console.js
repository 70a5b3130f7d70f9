// The console's only script: live count in the segment builder, the live event stream, file upload.
(function () {
  "use strict";
  var csrf = document.body.getAttribute("data-csrf") || "";

  function quote(value) {
    var v = value.trim();
    if (v === "" || /^-?\d+(\.\d+)?$/.test(v) || v === "true" || v === "false" || /^"/.test(v)) { return v; }
    return JSON.stringify(v);
  }

  // -- segment builder ----------------------------------------------------------------------------------------
  var condition = document.getElementById("condition");
  var preview = document.getElementById("preview");
  if (condition && preview) {
    var timer = null;
    var ask = function () {
      var text = condition.value.trim();
      if (!text) { preview.textContent = "Type a condition to see how many customers it selects."; return; }
      fetch("/console/api/preview", {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
                                     body: JSON.stringify({condition: text}), credentials: "same-origin"})
        .then(function (r) { return r.json().then(function (body) { return [r.ok, body]; }); })
        .then(function (res) {
          var ok = res[0], body = res[1];
          preview.textContent = ok ? (body.count.toLocaleString() + " customers — " + body.english +
                                      (body.sample.length ? " (e.g. " + body.sample.slice(0, 3).join(", ") + ")" : ""))
                                   : body.message;
          preview.setAttribute("data-count", ok ? String(body.count) : "");
        });
    };
    condition.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(ask, 300); });
    var add = function (part) {
      var join = document.getElementById("row-join").value;
      condition.value = condition.value.trim() ? condition.value.trim() + " " + join + " " + part : part;
      ask();
    };
    document.getElementById("add-attribute").addEventListener("click", function () {
      var op = document.getElementById("row-op").value;
      var field = document.getElementById("row-attribute").value;
      var value = document.getElementById("row-value").value;
      add(op === "is set" || op === "is not set" ? field + " " + op : field + " " + op + " " + quote(value));
    });
    document.getElementById("add-event").addEventListener("click", function () {
      var name = document.getElementById("row-event").value.trim();
      if (!name) { return; }
      var count = document.getElementById("row-count").value || "1";
      var days = document.getElementById("row-days").value;
      var args = [JSON.stringify(name)];
      if (count !== "1") { args.push("count >= " + count); }
      if (days) { args.push("within = " + days + "d"); }
      add("performed(" + args.join(", ") + ")");
    });
    if (condition.value.trim()) { ask(); }
  }

  // -- live events --------------------------------------------------------------------------------------------
  var live = document.getElementById("live");
  if (live) {
    var after = parseInt(live.getAttribute("data-after") || "0", 10);
    var poll = function () {
      fetch("/console/api/recent?after=" + after, {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (body) {
          (body.events || []).forEach(function (e) {
            after = Math.max(after, e.seq);
            var item = document.createElement("li");
            var details = document.createElement("details");
            var summary = document.createElement("summary");
            summary.textContent = e.timestamp + "  " + (e.event || e.type) + "  " + (e.user_id || e.anonymous_id || "");
            var pre = document.createElement("pre");
            pre.textContent = JSON.stringify({properties: e.properties, traits: e.traits}, null, 2);
            details.appendChild(summary); details.appendChild(pre); item.appendChild(details);
            live.insertBefore(item, live.firstChild);
          });
        })
        .finally(function () { setTimeout(poll, 1000); });
    };
    poll();
  }

  // -- file import --------------------------------------------------------------------------------------------
  var form = document.getElementById("import");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var file = document.getElementById("import-file").files[0];
      var report = document.getElementById("import-report");
      if (!file) { return; }
      report.textContent = "Importing " + file.name + "…";
      var params = "?filename=" + encodeURIComponent(file.name) + "&kind=" + document.getElementById("import-kind").value +
                   "&dry_run=" + document.getElementById("import-dry").checked;
      fetch("/console/api/import" + params, {method: "POST", body: file, credentials: "same-origin",
                                              headers: {"X-CSRF-Token": csrf}})
        .then(function (r) { return r.json(); })
        .then(function (body) {
          report.textContent = body.message ? body.message :
            body.rows + " rows: stored " + body.stored + ", already there " + body.duplicates + ", rejected " + body.rejected;
        });
    });
  }
}());
