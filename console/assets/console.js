// countersign console: keyboard navigation, live toasts, deadline countdowns, the drawer.
// No inline script anywhere (the Content-Security-Policy forbids it); this file is the only
// script besides htmx and its SSE extension.
(function () {
  "use strict";

  function rows() {
    return Array.prototype.slice.call(document.querySelectorAll("#sections tr[data-id]"));
  }

  function current() {
    var active = document.activeElement;
    return active && active.closest ? active.closest("tr[data-id]") : null;
  }

  function move(step) {
    var list = rows();
    if (!list.length) return;
    var index = list.indexOf(current());
    var next = list[Math.max(0, Math.min(list.length - 1, index + step))];
    if (index < 0) next = list[0];
    next.focus();
    next.classList.add("focused");
    list.forEach(function (row) { if (row !== next) row.classList.remove("focused"); });
  }

  function open(row) {
    var link = row && row.querySelector("a.open");
    if (link) link.click();
  }

  var pendingVote = null;

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName))) return;
    var row = current();
    switch (event.key) {
      case "j": move(1); event.preventDefault(); break;
      case "k": move(-1); event.preventDefault(); break;
      case "Enter": if (row) { open(row); event.preventDefault(); } break;
      case "x": {
        var box = row && row.querySelector("input.select");
        if (box) { box.checked = !box.checked; event.preventDefault(); }
        break;
      }
      case "a":
      case "r": {
        var button = document.querySelector(event.key === "a" ? "#drawer #approve" : "#drawer #reject");
        if (button) { button.focus(); event.preventDefault(); }
        else if (row) { pendingVote = event.key; open(row); event.preventDefault(); }
        break;
      }
      case "Escape": closeDrawer(); break;
    }
  });

  function closeDrawer() {
    var drawer = document.getElementById("drawer");
    if (drawer) { drawer.innerHTML = ""; drawer.classList.remove("open"); }
  }

  document.addEventListener("click", function (event) {
    if (event.target && event.target.closest && event.target.closest(".close-drawer")) closeDrawer();
  });

  // Selections survive the live refresh of the rows.
  var selected = [];
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "sections") {
      selected = Array.prototype.map.call(
        document.querySelectorAll("#sections input.select:checked"), function (box) { return box.value; });
    }
  });

  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    if (!target) return;
    if (target.id === "sections") {
      selected.forEach(function (id) {
        var box = document.querySelector('#sections input.select[value="' + CSS.escape(id) + '"]');
        if (box) box.checked = true;
      });
    }
    if (target.id === "drawer") {
      target.classList.add("open");
      var focus = pendingVote === "a" ? target.querySelector("#approve")
        : pendingVote === "r" ? target.querySelector("#reject")
        : target.querySelector("h2");
      pendingVote = null;
      if (focus) { if (!focus.hasAttribute("tabindex") && focus.tagName === "H2") focus.setAttribute("tabindex", "-1"); focus.focus(); }
    }
    countdowns();
  });

  // Live updates. Each event of the tenant stream carries its log cursor: the rows and the
  // count are read again consistent with it (the read model may lag the stream), a burst of
  // events once. "New approval assigned to you": an action this person may now vote on.
  var actionEvents = {
    ActionSubmitted: 1, VoteCast: 1, StageApproved: 1, ActionApproved: 1, ActionRejected: 1,
    ActionEscalated: 1, ActionExpired: 1, ActionCancelled: 1, ExecutionRequested: 1,
    ExecutionStarted: 1, ExecutionSucceeded: 1, ExecutionFailed: 1, ExecutionSkipped: 1,
    RollbackRequested: 1, ExecutionResumed: 1
  };
  var assigning = { ActionSubmitted: 1, StageApproved: 1, ActionEscalated: 1 };
  var latest = null;
  var pending = null;

  function refreshLive() {
    pending = null;
    if (!window.htmx || !latest) return;
    var cursor = "consistent_with=" + encodeURIComponent(latest);
    var sections = document.getElementById("sections");
    if (sections) {
      var url = sections.getAttribute("data-rows-url") || "/inbox/rows?";
      window.htmx.ajax("GET", url + (url.indexOf("?") < 0 ? "?" : "&") + cursor,
        { target: "#sections", swap: "innerHTML" });
    }
    if (document.getElementById("badge")) {
      window.htmx.ajax("GET", "/inbox/badge?" + cursor, { target: "#badge", swap: "innerHTML" });
    }
  }

  document.addEventListener("htmx:sseMessage", function (event) {
    if (!event.target || event.target.id !== "live") return;
    var message = event.detail;
    if (!message) return;
    if (message.type === "closed") {
      window.location.assign("/sign-in?ended=1");
      return;
    }
    if (!actionEvents[message.type]) return;
    var data;
    try { data = JSON.parse(message.data); } catch (e) { return; }
    if (!data) return;
    if (data.cursor) {
      latest = data.cursor;
      if (!pending) pending = setTimeout(refreshLive, 150);
    }
    scheduleNotifications();
    if (assigning[message.type] && data.eligible) {
      toast("New approval assigned to you: " + (data.summary || data.action_id), data.action_id);
    }
  });

  // An open drawer's execution log (/actions/{id}/live): a line arrived, so its section opens.
  document.addEventListener("htmx:sseMessage", function (event) {
    var target = event.target;
    if (!target || target.id !== "execution-progress") return;
    var section = target.closest("details");
    if (section) section.open = true;
  });

  // The unread-notification count: the notifier writes a notification shortly after the event
  // that caused it, so the badge is read again a moment later; a rise says so in a toast.
  var notificationTimer = null;
  function scheduleNotifications() {
    if (notificationTimer || !document.getElementById("notification-badge")) return;
    notificationTimer = setTimeout(function () {
      notificationTimer = null;
      var badge = document.getElementById("notification-badge");
      if (badge && window.htmx) window.htmx.trigger(badge, "refresh");
    }, 1500);
  }
  var unreadShown = null;
  document.addEventListener("htmx:afterSwap", function (event) {
    if (!event.target || event.target.id !== "notification-badge") return;
    var count = parseInt(event.target.textContent, 10) || 0;
    if (unreadShown !== null && count > unreadShown) {
      toast("You have a new notification", null, "/notifications");
    }
    unreadShown = count;
  });

  function toast(text, id, href) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var item = document.createElement("div");
    item.className = "toast";
    var link = document.createElement("a");
    link.href = href || "/actions/" + encodeURIComponent(id || "");
    link.textContent = text; // text, never markup
    item.appendChild(link);
    box.appendChild(item);
    setTimeout(function () { item.remove(); }, 12000);
  }

  // After a reconnection (the stream resumes from Last-Event-ID; a stream opened anew does
  // not), the rows and the count are read again, so nothing missed while away stays stale.
  var opened = 0;
  document.addEventListener("htmx:sseOpen", function () {
    opened += 1;
    if (opened < 2 || !window.htmx) return;
    ["#sections", "#badge", "#notification-badge"].forEach(function (selector) {
      var element = document.querySelector(selector);
      if (element) window.htmx.trigger(element, "refresh");
    });
  });

  // Deadline countdowns.
  function countdowns() {
    var now = Date.now();
    document.querySelectorAll("[data-deadline]").forEach(function (element) {
      var at = Date.parse(element.getAttribute("data-deadline"));
      if (isNaN(at)) return;
      var seconds = Math.round((at - now) / 1000);
      var span = Math.abs(seconds);
      var text = span < 60 ? span + " s"
        : span < 3600 ? Math.floor(span / 60) + " min"
        : span < 86400 ? Math.floor(span / 3600) + " h " + Math.floor(span % 3600 / 60) + " min"
        : Math.floor(span / 86400) + " d " + Math.floor(span % 86400 / 3600) + " h";
      element.textContent = seconds >= 0 ? "in " + text : "overdue by " + text;
    });
  }
  setInterval(countdowns, 30000);
})();
