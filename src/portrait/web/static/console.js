// The console's only script: live count in the segment builder, the live event stream, file upload.
(function () {
  "use strict";
  var csrf = document.body.getAttribute("data-csrf") || "";

  function quote(value) {
    var v = value.trim();
    if (v === "" || /^-?\d+(\.\d+)?$/.test(v) || v === "true" || v === "false" || /^"/.test(v)) { return v; }
    return JSON.stringify(v);
  }

  // What was sent, as indented JSON, with the characters that do not show but reorder or hide the text around them
  // (bidirectional overrides, zero-width characters...) written as their JSON escape: as on the customer card.
  var invisible = /[\u0080-\u009f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
  function jsonText(value) {
    return JSON.stringify(value, null, 2).replace(invisible, function (c) {
      return "\\u" + ("000" + c.charCodeAt(0).toString(16)).slice(-4);
    });
  }

  // "Back" on the error page: the previous page, or the overview when there is none. Not a javascript: link: the
  // content policy runs no inline script.
  Array.prototype.forEach.call(document.querySelectorAll("a[data-back]"), function (link) {
    link.addEventListener("click", function (event) {
      if (window.history.length > 1) { event.preventDefault(); window.history.back(); }
    });
  });

  // A name or id for a line of text: those characters, and C0 controls, as their code point (as the pages show them).
  var hidden = /[\u0000-\u0008\u000b-\u001f\u007f\u0080-\u009f\u00ad\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g;
  function visible(text) {
    return String(text).replace(hidden, function (c) {
      return " U+" + ("000" + c.charCodeAt(0).toString(16).toUpperCase()).slice(-4) + " ";
    });
  }

  // A sender's text in its own <bdi>: a right-to-left name does not pull the digits or marks after it into its run.
  // As web/common.py's event_label: a page or screen view by its name and kind, a track by its name.
  function eventLabel(e) {
    if (e.event === null || e.event === undefined) { return e.type; }
    return (e.type === "page" || e.type === "screen") ? e.event + " (" + e.type + ")" : e.event;
  }

  function isolated(text) {
    var element = document.createElement("bdi");
    element.textContent = visible(text);
    return element;
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
                                      (body.notes || []).map(function (note) { return ". Note: " + note; }).join(""))
                                   : body.message;
          preview.setAttribute("data-count", ok ? String(body.count) : "");
          sampleTable(ok ? body : null);
        });
    };
    // Some of the customers selected, so they can be recognised: user id, email and name, and the attributes the
    // condition compares (personal ones masked by the server for a key without pii:read). Text nodes only.
    var sampleTable = function (body) {
      var table = document.getElementById("preview-sample");
      var samples = body ? (body.sample_profiles || []) : [];
      table.hidden = !samples.length;
      var head = table.tHead, rows = table.tBodies[0];
      head.textContent = "";
      rows.textContent = "";
      if (!samples.length) { return; }
      var columns = ["user id"].concat(body.sample_columns);
      var header = head.insertRow();
      columns.forEach(function (name) {
        var cell = document.createElement("th");
        cell.scope = "col";
        cell.textContent = name;
        header.appendChild(cell);
      });
      samples.forEach(function (sample) {
        var row = rows.insertRow();
        row.insertCell().textContent = sample.user_id || "";
        body.sample_columns.forEach(function (code) {
          var value = sample.traits[code];
          row.insertCell().textContent = value === undefined || value === null ? "" :
            (typeof value === "string" ? value : JSON.stringify(value));
        });
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
    document.getElementById("add-segment").addEventListener("click", function () {
      var name = document.getElementById("row-segment").value;
      var part = "in_segment(" + JSON.stringify(name) + ")";
      add(document.getElementById("row-segment-mode").value === "not" ? "not " + part : part);
    });
    document.getElementById("group").addEventListener("click", function () {
      if (condition.value.trim()) { condition.value = "(" + condition.value.trim() + ")"; ask(); }
    });
    if (condition.value.trim()) { ask(); }
  }

  // -- live events --------------------------------------------------------------------------------------------
  // A list that keeps moving beside the rest of the page can be paused (WCAG 2.2.2): while the toggle is pressed
  // nothing is fetched; on resuming, what arrived meanwhile is fetched at once.
  var live = document.getElementById("live");
  var pause = document.getElementById("live-pause");
  if (live) {
    var after = parseInt(live.getAttribute("data-after") || "0", 10);
    var paused = function () { return pause !== null && pause.getAttribute("aria-pressed") === "true"; };
    if (pause) {
      pause.addEventListener("click", function () { pause.setAttribute("aria-pressed", String(!paused())); });
    }
    var poll = function () {
      if (paused()) { setTimeout(poll, 1000); return; }
      fetch("/console/api/recent?after=" + after, {credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (body) {
          // Asked before the pause and answered after it: not shown now (nor counted in `after`), so the list
          // stays still and the same events come again on resuming.
          if (paused()) { return; }
          (body.events || []).forEach(function (e) {
            after = Math.max(after, e.seq);
            var item = document.createElement("li");
            var details = document.createElement("details");
            var summary = document.createElement("summary");
            summary.append(e.timestamp + "  ", isolated(eventLabel(e)), "  ",
                           isolated(e.user_id || e.anonymous_id || ""));
            var pre = document.createElement("pre");
            pre.textContent = jsonText({properties: e.properties, traits: e.traits});
            details.appendChild(summary); details.appendChild(pre); item.appendChild(details);
            live.insertBefore(item, live.firstChild);
          });
        })
        .finally(function () { setTimeout(poll, 1000); });
    };
    poll();
  }

  // -- file import: a CSV's columns get a role each (the mapping) and, for a property or trait, a type; a dry run
  // reports, then the import runs ---------------------------------------------------------------------------------
  var form = document.getElementById("import");
  if (form) {
    var fileInput = document.getElementById("import-file");
    var columnsBox = document.getElementById("import-columns");
    var columnList = document.getElementById("import-column-list");
    var report = document.getElementById("import-report");
    var roles = [["", "ignore"], ["user_id", "user id"], ["anonymous_id", "anonymous id"], ["email", "email"],
                 ["phone", "phone"], ["event_column", "event name"], ["timestamp", "time"], ["field", "property / trait"]];
    // The declared column types (docs/cli.md "Declared column types"); "" is automatic: inferred from the values.
    var types = [["", "automatic"], ["text", "text"], ["number", "number"], ["integer", "whole number"],
                 ["boolean", "yes / no"], ["date", "date"], ["timestamp", "date and time"]];
    var csvColumns = [];

    var select = function (id, choices) {
      var element = document.createElement("select");
      element.id = id;
      choices.forEach(function (choice) {
        var option = document.createElement("option");
        option.value = choice[0]; option.textContent = choice[1];
        element.appendChild(option);
      });
      return element;
    };
    var guessRole = function (column) {
      var guess = column.toLowerCase().replace(/[^a-z]/g, "");
      return guess === "email" ? "email" : guess === "phone" ? "phone" :
             (guess === "userid" || guess === "id" || guess === "customerid") ? "user_id" :
             (guess === "timestamp" || guess === "date" || guess === "time") ? "timestamp" : "field";
    };
    // One line per column: its role, and its type while the role is property / trait (only those take a type).
    var columnLine = function (column, index) {
      var line = document.createElement("div");
      line.className = "import-column";
      var roleLabel = document.createElement("label");
      roleLabel.textContent = column + " ";
      var role = select("import-role-" + index, roles);
      role.value = guessRole(column);
      roleLabel.appendChild(role);
      var typeLabel = document.createElement("label");
      typeLabel.textContent = "type ";
      var type = select("import-type-" + index, types);
      type.setAttribute("aria-label", "Type of " + column);  // "type" alone would not say whose
      typeLabel.appendChild(type);
      // A date or time written another way than ISO-8601 (24.12.2025) says how: its strptime format, declared as
      // date:%d.%m.%Y (docs/cli.md "Dates in other formats"); empty is ISO
      var formatLabel = document.createElement("label");
      formatLabel.textContent = "format ";
      var format = document.createElement("input");
      format.id = "import-format-" + index;
      format.placeholder = "ISO-8601, or e.g. %d.%m.%Y";
      format.setAttribute("aria-label", "Format of " + column);
      formatLabel.appendChild(format);
      var showType = function () {
        typeLabel.hidden = role.value !== "field";
        formatLabel.hidden = typeLabel.hidden || (type.value !== "date" && type.value !== "timestamp");
      };
      role.addEventListener("change", showType);
      type.addEventListener("change", showType);
      showType();
      line.appendChild(roleLabel); line.appendChild(typeLabel); line.appendChild(formatLabel);
      return line;
    };
    // The first record of a CSV as the server's reader (pyarrow) reads it, so the mapping names its columns: a
    // quoted name may hold the delimiter, doubled quotes and line breaks; names are kept as written (no trimming);
    // a UTF-8 byte order mark is not part of the first name. Splitting the first line on "," cut a quoted
    // "amount, EUR" in two and read a .tsv header as one column: the import then named missing columns.
    var headerOf = function (text, delimiter) {
      var names = [], field = "", quoted = false, i = text.charCodeAt(0) === 0xFEFF ? 1 : 0;
      for (; i < text.length; i += 1) {
        var c = text[i];
        if (quoted) {
          if (c !== '"') { field += c; } else if (text[i + 1] === '"') { field += '"'; i += 1; } else { quoted = false; }
        } else if (c === '"' && field === "") { quoted = true; }
        else if (c === delimiter) { names.push(field); field = ""; }
        else if (c === "\n" || c === "\r") { break; }
        else { field += c; }
      }
      names.push(field);
      return names;
    };
    fileInput.addEventListener("change", function () {
      var file = fileInput.files[0];
      csvColumns = [];
      columnList.textContent = "";
      columnsBox.hidden = true;
      if (!file || !/\.(csv|tsv|txt)$/i.test(file.name)) { return; }
      file.slice(0, 65536).text().then(function (text) {
        csvColumns = headerOf(text, /\.tsv$/i.test(file.name) ? "\t" : ",");
        csvColumns.forEach(function (column, index) { columnList.appendChild(columnLine(column, index)); });
        columnsBox.hidden = false;
      });
    });
    var mapping = function (kind) {
      if (!csvColumns.length) { return null; }
      var doc = {identifiers: {}}, fields = [], declared = {};
      csvColumns.forEach(function (column, index) {
        var role = document.getElementById("import-role-" + index).value;
        var type = document.getElementById("import-type-" + index).value;
        var format = document.getElementById("import-format-" + index).value.trim();
        if (format && (type === "date" || type === "timestamp")) { type += ":" + format; }
        if (role === "user_id" || role === "anonymous_id" || role === "email" || role === "phone") { doc.identifiers[role] = column; }
        else if (role === "event_column" || role === "timestamp") { doc[role] = column; }
        else if (role === "field") {
          fields.push(column);
          if (type) { declared[column] = type; }
        }
      });
      doc[kind === "profiles" ? "traits" : "properties"] = fields;
      // The mapping's "types" (as in a mapping file): JSON keeps any column name whole, commas and "=" included
      if (Object.keys(declared).length) { doc.types = declared; }
      var name = document.getElementById("import-event").value.trim();
      if (kind === "events" && name && !doc.event_column) { doc.event = name; }
      return doc;
    };

    var paragraph = function (text) {
      var element = document.createElement("p");
      element.textContent = text;
      return element;
    };
    var SHOWN_REJECTIONS = 10;
    // The first rejected rows, each with its reason ("row 3: column amount: 'tbd' is not a number").
    var rejections = function (body) {
      var list = document.createElement("ul");
      list.className = "rejections";
      (body.first_rejected || []).slice(0, SHOWN_REJECTIONS).forEach(function (rejected) {
        var item = document.createElement("li");
        item.textContent = "row " + rejected.row + " (" + rejected.code + "): " + rejected.reason;
        list.appendChild(item);
      });
      if (body.rejected > list.children.length) {
        var more = document.createElement("li");
        more.textContent = "… and " + (body.rejected - list.children.length) + " more";
        list.appendChild(more);
      }
      return list;
    };
    // A column read as text because a value does not fit the type of the rows before it: said, with buttons that
    // declare the column (its rows that do not fit are then rejected) or read it as text (no note), and check again.
    var declareButton = function (index, type, text) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = text;
      button.addEventListener("click", function () {
        var choice = document.getElementById("import-type-" + index);
        choice.value = type;
        choice.dispatchEvent(new Event("change"));  // shows or hides the column's format, as a choice by hand does
        choice.focus();  // the button goes with the report: the focus moves to what it changed
        send(true);
      });
      return button;
    };
    var textNote = function (fallback) {
      var note = paragraph("Note: column " + fallback.column + " was read as text: row " + fallback.row + " holds '" +
                           fallback.value + "', which is not a " + fallback.type + " like the rows before it. ");
      note.className = "note";
      var index = csvColumns.indexOf(fallback.column);
      if (index >= 0) {
        note.append(declareButton(index, fallback.type, "Declare " + fallback.column + " a " + fallback.type +
                                  " (reject rows that do not fit)"), " ",
                    declareButton(index, "text", "Read " + fallback.column + " as text"));
      }
      return note;
    };
    // A column of dates not written in ISO-8601 (24.12.2025): said in the console's words (the report's note names
    // the CLI's --types), with a button per format that declares the column a date in it and checks again. When the
    // values do not tell day-first from month-first there are two, each saying what the first value would be.
    var MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                  "November", "December"];
    var longDate = function (iso) {  // "2024-02-01" -> "1 February 2024": no locale, no time zone to shift the day
      var parts = iso.split("-");
      return parseInt(parts[2], 10) + " " + MONTHS[parseInt(parts[1], 10) - 1] + " " + parts[0];
    };
    // Asked only of two formats, which then differ in just that (%d/%m/%Y and %m/%d/%Y): no year-first one is
    // ever one of two
    var whichFirst = function (format) {
      var day = format.indexOf("%d"), month = format.indexOf("%m");
      return day < month ? "day first" : "month first";
    };
    var declareDateButton = function (index, dates, at) {
      var format = dates.formats[at];
      var meaning = dates.example + " is " + longDate(dates.example_dates[at]) +
                    (dates.formats.length > 1 ? " (" + whichFirst(format) + ")" : "");
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = "Declare " + dates.column + " date:" + format + " — " + meaning;
      button.addEventListener("click", function () {
        var choice = document.getElementById("import-type-" + index);
        choice.value = "date";
        choice.dispatchEvent(new Event("change"));  // shows the column's format box, as a choice by hand does
        var box = document.getElementById("import-format-" + index);
        box.value = format;
        box.focus();  // the button goes with the report: the focus moves to what it changed
        send(true);
      });
      return button;
    };
    var datesNote = function (dates) {
      var note = paragraph("Note: column " + dates.column + " was read as text: its values are dates written as '" +
                           dates.example + "', not ISO-8601" +
                           (dates.formats.length > 1 ? "; they do not tell day first from month first" : "") +
                           ". Declare their format to store them as dates. ");
      note.className = "note";
      var index = csvColumns.indexOf(dates.column);
      if (index >= 0) {
        dates.formats.forEach(function (format, at) {
          note.append(declareDateButton(index, dates, at), " ");
        });
      }
      return note;
    };
    var show = function (body, dryRun) {
      var codes = Object.keys(body.by_code || {}).map(function (c) { return c + ": " + body.by_code[c]; }).join(", ");
      report.textContent = "";
      report.appendChild(paragraph(
        (dryRun ? "Dry run — " : "Done — ") + body.rows + " rows: " + (dryRun ? "would store " : "stored ") +
        body.stored + ", already there " + body.duplicates + ", rejected " + body.rejected + (codes ? " (" + codes + ")" : "")));
      if (body.rejected) { report.appendChild(rejections(body)); }
      (body.read_as_text || []).forEach(function (fallback) { report.appendChild(textNote(fallback)); });
      (body.dates_as_text || []).forEach(function (dates) { report.appendChild(datesNote(dates)); });
      report.setAttribute("data-stored", String(body.stored));
    };
    var send = function (dryRun) {
      var file = fileInput.files[0];
      var progress = document.getElementById("import-progress");
      if (!file) { report.textContent = "Choose a file first."; return; }
      var kind = document.getElementById("import-kind").value;
      var doc = mapping(kind);
      var params = "?filename=" + encodeURIComponent(file.name) + "&kind=" + kind + "&dry_run=" + dryRun +
                   (doc ? "&mapping=" + encodeURIComponent(JSON.stringify(doc)) : "");
      progress.hidden = false;
      progress.removeAttribute("value");  // no value: the bar pulses until the server says how far it is
      count.textContent = "";
      report.textContent = (dryRun ? "Checking " : "Importing ") + file.name + "…";
      fetch("/console/api/import" + params, {method: "POST", body: file, credentials: "same-origin",
                                              headers: {"X-CSRF-Token": csrf}})
        .then(function (r) { return r.json(); })
        .then(function (job) { follow(job, dryRun, Date.now()); });
    };
    // The import runs on the server as a job, polled every half second: the bar shows the rows read of the rows
    // in the file (or the bytes read, for NDJSON), the count beside it the rows and the rate -- the numbers the
    // CLI shows. (The count is not a live region: a screen reader hears the report once, not every update.)
    var count = document.getElementById("import-count");
    var follow = function (job, dryRun, started) {
      var progress = document.getElementById("import-progress");
      if (job.message) { progress.hidden = true; report.textContent = job.message; return; }
      var read = job.progress;
      if (job.status === "queued") {  // the server runs a few imports at a time (PORTRAIT_IMPORTS_AT_ONCE)
        count.textContent = "Waiting for the server's other imports: place " + job.queue_place + " in the queue" +
          (job.queue_place === 1 ? " (it runs next)" : "");
        setTimeout(function () {
          fetch("/console/api/imports/" + encodeURIComponent(job.id), {credentials: "same-origin"})
            .then(function (r) { return r.json(); })
            .then(function (next) { follow(next, dryRun, next.status === "queued" ? started : Date.now()); });
        }, 500);
        return;
      }
      if (read.rows_total !== null) { progress.max = Math.max(read.rows_total, 1); progress.value = read.rows; }
      else if (read.bytes_read !== null) { progress.max = Math.max(read.bytes_total, 1); progress.value = read.bytes_read; }
      var rate = read.rows / Math.max((Date.now() - started) / 1000, 0.001);
      count.textContent = read.rows.toLocaleString("en") +
        (read.rows_total !== null ? " of " + read.rows_total.toLocaleString("en") : "") + " rows, " +
        Math.round(rate).toLocaleString("en") + " rows/s";
      if (job.status === "running") {
        setTimeout(function () {
          fetch("/console/api/imports/" + encodeURIComponent(job.id), {credentials: "same-origin"})
            .then(function (r) { return r.json(); })
            .then(function (next) { follow(next, dryRun, started); });
        }, 500);
        return;
      }
      progress.hidden = true;
      if (job.status === "failed") { report.textContent = job.error.message; return; }
      show(job.report, dryRun);
    };
    document.getElementById("import-check").addEventListener("click", function () { send(true); });
    form.addEventListener("submit", function (event) { event.preventDefault(); send(false); });
  }

  // Admin page: privacy requests run in the server's worker, backups in a thread of their own. While one waits or
  // runs, its table (only it: the page's forms and an import in progress stay as they are) is refreshed from the
  // page every 1.5 s.
  var refreshed = function (id, unfinished) {
    var table = document.getElementById(id);
    var refresh = function () {
      fetch(window.location.pathname, {credentials: "same-origin"})
        .then(function (r) { return r.text(); })
        .then(function (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(id);
          if (fresh) { table.tBodies[0].innerHTML = fresh.tBodies[0].innerHTML; }
        })
        .finally(function () { if (unfinished(table)) { setTimeout(refresh, 1500); } });
    };
    if (table && unfinished(table)) { setTimeout(refresh, 1500); }
  };
  refreshed("privacy-requests", function (root) {
    return Array.prototype.some.call(root.querySelectorAll("[data-test=request-status]"), function (cell) {
      return /^(pending|running)$/.test(cell.textContent.trim());
    });
  });
  refreshed("backup-list", function (root) { return root.querySelector("[data-test=backup-running]") !== null; });
}());
