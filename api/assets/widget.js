/*! Parley chat widget. Served by the parley binary at /widget.js; no build step, no
 * dependencies. Embed: <script src="https://PARLEY_HOST/widget.js" data-parley-bot="BOT_ID" async></script>
 * Every text is set with textContent; styles go to an open shadow root as a constructed
 * stylesheet, so a strict Content-Security-Policy on the host page only needs this script. */
(function () {
  "use strict";
  if (window.Parley && window.Parley.__parley) return;

  var script = document.currentScript;
  var BASE = script && script.src ? new URL(script.src, location.href).origin : location.origin;
  var WS_URL = BASE.replace(/^http/, "ws") + "/graphql";

  var Q_PUBLIC = "query($id: ID!) { publicBot(id: $id) { id name typingDelayMs appearance { title primaryColor avatarUrl launcherText } } }";
  var Q_START = "mutation($b: ID!, $v: JSON) { startConversation(botId: $b, variables: $v) { conversationId visitorToken } }";
  var Q_ANSWER = "mutation($c: ID!, $t: String!, $x: String!) { sendAnswer(conversationId: $c, visitorToken: $t, text: $x) { seq } }";
  var Q_EVENTS = "subscription($c: ID!, $t: String, $a: Int) { conversationEvents(conversationId: $c, visitorToken: $t, afterSeq: $a) { seq kind text input { type choices { label value } } } }";

  var CSS = [
    ":host{all:initial;--p:#2563eb;--pt:#fff;font:15px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#111827}",
    "*{box-sizing:border-box}",
    ".root{position:fixed;right:20px;bottom:20px;z-index:2147483000;display:flex;flex-direction:column;align-items:flex-end;gap:12px;max-width:calc(100vw - 40px)}",
    ".root.inline{position:static;z-index:auto;height:100%;max-width:none;display:block}",
    "button{font:inherit;cursor:pointer}",
    ":focus-visible{outline:3px solid #f59e0b;outline-offset:2px}",
    ".launcher{background:var(--p);color:var(--pt);border:0;border-radius:999px;padding:12px 20px;box-shadow:0 4px 14px rgba(0,0,0,.25);font-weight:600;max-width:100%;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}",
    ".panel{width:370px;max-width:100%;height:560px;max-height:calc(100vh - 100px);background:#fff;border-radius:14px;box-shadow:0 8px 30px rgba(0,0,0,.25);display:flex;flex-direction:column;overflow:hidden}",
    ".inline .panel{width:100%;height:100%;min-height:360px;max-height:none;border-radius:10px;box-shadow:0 0 0 1px #e5e7eb}",
    ".panel[hidden],[hidden]{display:none!important}",
    ".head{background:var(--p);color:var(--pt);display:flex;align-items:center;gap:10px;padding:12px 14px}",
    ".head img{width:32px;height:32px;border-radius:50%;object-fit:cover;background:#fff}",
    ".title{flex:1;font-weight:600;margin:0;font-size:16px;overflow-wrap:anywhere}",
    ".close{background:transparent;border:0;color:inherit;font-size:22px;line-height:1;padding:4px 8px;border-radius:6px}",
    ".log{flex:1;overflow-y:auto;overflow-x:hidden;padding:14px;display:flex;flex-direction:column;gap:8px;background:#f9fafb}",
    ".msg{max-width:85%;padding:9px 12px;border-radius:14px;white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}",
    ".msg[data-from=bot]{align-self:flex-start;background:#fff;border:1px solid #e5e7eb;border-bottom-left-radius:4px}",
    ".msg[data-from=visitor]{align-self:flex-end;background:var(--p);color:var(--pt);border-bottom-right-radius:4px}",
    ".invalid{align-self:flex-start;color:#991b1b;background:#fef2f2;border:1px solid #fecaca;border-radius:10px;padding:7px 11px;max-width:85%;overflow-wrap:anywhere}",
    ".notice{align-self:stretch;text-align:center;color:#374151;padding:10px;overflow-wrap:anywhere}",
    ".typing{align-self:flex-start;display:flex;gap:4px;padding:12px;background:#fff;border:1px solid #e5e7eb;border-radius:14px}",
    ".typing span{width:7px;height:7px;border-radius:50%;background:#9ca3af;animation:pb 1s infinite ease-in-out}",
    ".typing span:nth-child(2){animation-delay:.15s}.typing span:nth-child(3){animation-delay:.3s}",
    "@keyframes pb{0%,80%,100%{opacity:.3;transform:translateY(0)}40%{opacity:1;transform:translateY(-3px)}}",
    ".choices{display:flex;flex-wrap:wrap;gap:6px;padding:8px 14px 0;background:#fff}",
    ".choice{border:1px solid var(--p);color:var(--p);background:#fff;border-radius:999px;padding:7px 14px;max-width:100%;overflow-wrap:anywhere;text-align:left}",
    ".choice:hover{background:var(--p);color:var(--pt)}",
    ".bar{display:flex;gap:8px;padding:10px 14px 14px;background:#fff;border-top:1px solid #e5e7eb}",
    ".bar input{flex:1;min-width:0;font:inherit;padding:9px 12px;border:1px solid #d1d5db;border-radius:10px;color:#111827;background:#fff}",
    ".send,.restart{background:var(--p);color:var(--pt);border:0;border-radius:10px;padding:9px 16px;font-weight:600}",
    ".end{display:flex;flex-direction:column;align-items:center;gap:8px;padding:12px 14px 14px;background:#fff;border-top:1px solid #e5e7eb}",
    ".sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0);white-space:nowrap}",
    "button:disabled,input:disabled{opacity:.6;cursor:default}",
    "@media (max-width:480px){.root:not(.inline).open{inset:0;right:0;bottom:0;max-width:none;gap:0}.root:not(.inline).open .launcher{display:none}.root:not(.inline) .panel{width:100vw;height:100%;max-height:none;border-radius:0}.root:not(.inline){right:12px;bottom:12px;max-width:calc(100vw - 24px)}}",
    "@media (prefers-reduced-motion:reduce){*{animation:none!important;transition:none!important;scroll-behavior:auto!important}}"
  ].join("\n");

  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] != null) e.setAttribute(k, attrs[k]);
    if (text != null) e.textContent = text;
    return e;
  }

  function gql(query, variables) {
    return fetch(BASE + "/graphql", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ query: query, variables: variables }),
      credentials: "omit"
    }).then(function (r) { return r.json(); }, function () {
      var e = new Error("network"); e.code = "NETWORK"; throw e;
    }).then(function (j) {
      if (j.errors && j.errors.length) {
        var e = new Error(j.errors[0].message);
        e.code = (j.errors[0].extensions || {}).code || "ERROR";
        throw e;
      }
      return j.data;
    });
  }

  var store = {
    get: function (k) { try { return JSON.parse(localStorage.getItem(k) || "null"); } catch (_) { return null; } },
    set: function (k, v) { try { localStorage.setItem(k, JSON.stringify(v)); } catch (_) { /* storage off */ } },
    del: function (k) { try { localStorage.removeItem(k); } catch (_) { /* storage off */ } }
  };

  /* graphql-transport-ws, one subscription per socket, reconnecting with backoff and resuming
   * after the last seq it saw. */
  function Events(conv, onEvent, onError) {
    this.conv = conv; this.onEvent = onEvent; this.onError = onError;
    this.last = 0; this.tries = 0; this.stopped = false; this.ws = null; this.timer = null;
    var self = this;
    this.onOnline = function () { if (!self.ws && !self.stopped) { clearTimeout(self.timer); self.connect(); } };
    window.addEventListener("online", this.onOnline);
  }
  Events.prototype.connect = function () {
    var self = this;
    if (this.stopped) return;
    var ws;
    try { ws = new WebSocket(WS_URL, "graphql-transport-ws"); } catch (_) { this.retry(); return; }
    this.ws = ws;
    var send = function (m) { try { ws.send(JSON.stringify(m)); } catch (_) { /* closing */ } };
    ws.onopen = function () { send({ type: "connection_init", payload: {} }); };
    ws.onmessage = function (m) {
      var msg; try { msg = JSON.parse(m.data); } catch (_) { return; }
      if (msg.type === "connection_ack") {
        self.tries = 0;
        send({ id: "1", type: "subscribe", payload: { query: Q_EVENTS, variables: { c: self.conv.id, t: self.conv.token, a: self.last } } });
      } else if (msg.type === "ping") {
        send({ type: "pong" });
      } else if (msg.type === "next") {
        var p = msg.payload || {};
        if (p.errors && p.errors.length) { self.fail(p.errors[0]); return; }
        var ev = p.data && p.data.conversationEvents;
        if (ev && ev.seq > self.last) { self.last = ev.seq; self.onEvent(ev); }
      } else if (msg.type === "error") {
        self.fail((msg.payload || [])[0] || {});
      } else if (msg.type === "complete") {
        self.stop();
      }
    };
    ws.onclose = function () { if (self.ws === ws) { self.ws = null; self.retry(); } };
  };
  Events.prototype.fail = function (err) {
    this.stop();
    var e = new Error(err.message || "error"); e.code = (err.extensions || {}).code || "ERROR";
    this.onError(e);
  };
  Events.prototype.retry = function () {
    if (this.stopped) return;
    var self = this;
    var delay = Math.min(15000, 500 * Math.pow(2, this.tries++)) * (0.75 + Math.random() / 2);
    this.timer = setTimeout(function () { self.connect(); }, delay);
  };
  Events.prototype.stop = function () {
    this.stopped = true; clearTimeout(this.timer);
    window.removeEventListener("online", this.onOnline);
    var ws = this.ws; this.ws = null;
    if (ws) { try { ws.close(1000); } catch (_) { /* closed */ } }
  };

  var reduced = window.matchMedia && window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  var PAUSE = reduced ? 250 : 700;

  function Widget(opts) {
    this.bot = String(opts.bot);
    this.variables = opts.variables || null;
    this.key = "parley:" + this.bot;
    this.queue = []; this.busy = false; this.live = false; this.started = false;
    this.events = null; this.conv = null; this.lastShown = null; this.ended = false; this.unavailable = null;
    this.build(opts.target);
    this.loadAppearance();
    if (this.inline || opts.open) this.open();
  }

  Widget.prototype.build = function (target) {
    var self = this;
    var container = target ? (typeof target === "string" ? document.querySelector(target) : target) : null;
    if (target && !container) console.warn("Parley: no element matches data-parley-target", target);
    this.inline = !!container;
    this.host = el("div", { "data-parley-host": "" });
    (container || document.body).appendChild(this.host);
    var root = this.host.attachShadow ? this.host.attachShadow({ mode: "open" }) : this.host;
    this.root = root;
    try {
      var sheet = new CSSStyleSheet(); sheet.replaceSync(CSS); root.adoptedStyleSheets = [sheet];
    } catch (_) {
      root.appendChild(el("style", null, CSS));
    }
    var id = "parley-" + Math.random().toString(36).slice(2, 8);
    this.wrap = el("div", { "class": "root" + (this.inline ? " inline" : "") });
    root.appendChild(this.wrap);
    if (!this.inline) {
      this.launcher = el("button", { "class": "launcher", type: "button", "data-parley": "launcher", "aria-expanded": "false", "aria-controls": id + "-panel" }, "Chat with us");
      this.launcher.addEventListener("click", function () { self.opened ? self.close() : self.open(); });
    }
    this.panel = el("section", { "class": "panel", "data-parley": "panel", id: id + "-panel", "aria-labelledby": id + "-title" });
    this.panel.hidden = true;
    var head = el("div", { "class": "head" });
    this.avatar = el("img", { alt: "" }); this.avatar.hidden = true;
    this.title = el("h2", { "class": "title", id: id + "-title" }, "Chat");
    head.appendChild(this.avatar); head.appendChild(this.title);
    if (!this.inline) {
      var close = el("button", { "class": "close", type: "button", "aria-label": "Close chat" }, "\u00d7");
      close.addEventListener("click", function () { self.close(); if (self.launcher) self.launcher.focus(); });
      head.appendChild(close);
    }
    this.log = el("div", { "class": "log", role: "log", "aria-live": "polite", "aria-relevant": "additions", tabindex: "0", "aria-label": "Messages" });
    this.typing = el("div", { "class": "typing", "data-parley": "typing", role: "status", "aria-label": "The bot is typing" });
    this.typing.appendChild(el("span")); this.typing.appendChild(el("span")); this.typing.appendChild(el("span"));
    this.typing.hidden = true;
    this.choices = el("div", { "class": "choices", role: "group", "aria-label": "Choices" }); this.choices.hidden = true;
    this.bar = el("div", { "class": "bar" });
    this.input = el("input", { "data-parley": "input", type: "text", "aria-label": "Your answer", placeholder: "Type your answer\u2026", autocomplete: "off", id: id + "-input" });
    this.send = el("button", { "class": "send", type: "button", "data-parley": "send" }, "Send");
    this.bar.appendChild(this.input); this.bar.appendChild(this.send);
    this.end = el("div", { "class": "end" }); this.end.hidden = true;
    this.endText = el("p", { "data-parley": "ended", role: "status" }, "This conversation has ended.");
    this.endText.style.margin = "0";
    this.restartBtn = el("button", { "class": "restart", type: "button", "data-parley": "restart" }, "Start a new conversation");
    this.end.appendChild(this.endText); this.end.appendChild(this.restartBtn);
    this.panel.appendChild(head); this.panel.appendChild(this.log); this.panel.appendChild(this.choices);
    this.panel.appendChild(this.bar); this.panel.appendChild(this.end);
    this.wrap.appendChild(this.panel);
    if (this.launcher) this.wrap.appendChild(this.launcher);
    this.setInput(null);

    this.send.addEventListener("click", function () { self.submit(self.input.value); });
    this.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.isComposing) { e.preventDefault(); self.submit(self.input.value); }
    });
    this.restartBtn.addEventListener("click", function () { self.restart(); });
    this.panel.addEventListener("keydown", function (e) {
      if (e.key === "Escape" && !self.inline) { self.close(); if (self.launcher) self.launcher.focus(); }
    });
  };

  Widget.prototype.loadAppearance = function () {
    var self = this;
    gql(Q_PUBLIC, { id: this.bot }).then(function (d) {
      var b = d.publicBot;
      if (!b) { self.unavailable = "This chat is not available right now."; self.showUnavailable(); return; }
      var a = b.appearance || {};
      // The bot's own pace between two bot messages; 0 keeps the widget's default.
      if (b.typingDelayMs > 0) self.typingDelay = Math.min(b.typingDelayMs, 10000);
      self.title.textContent = a.title || b.name;
      if (self.launcher && a.launcherText) self.launcher.textContent = a.launcherText;
      if (a.primaryColor && /^#[0-9a-f]{3}([0-9a-f]{3})?$/i.test(a.primaryColor)) self.host.style.setProperty("--p", a.primaryColor);
      if (a.avatarUrl && /^https?:\/\//i.test(a.avatarUrl)) { self.avatar.src = a.avatarUrl; self.avatar.hidden = false; }
    }, function (e) {
      if (e.code === "FORBIDDEN") { self.unavailable = "Sorry, this chat is not available on this website."; self.showUnavailable(); }
    });
  };

  Widget.prototype.showUnavailable = function () {
    if (!this.opened || !this.unavailable || this.shownUnavailable) return;
    this.shownUnavailable = true;
    if (this.events) this.events.stop();
    this.hideTyping();
    this.log.appendChild(el("p", { "class": "notice", role: "alert", "data-parley": "unavailable" }, this.unavailable));
    this.setInput(null); this.bar.hidden = true; this.choices.hidden = true;
  };

  Widget.prototype.open = function () {
    this.opened = true;
    this.panel.hidden = false;
    this.wrap.classList.add("open");
    if (this.launcher) this.launcher.setAttribute("aria-expanded", "true");
    if (this.unavailable) { this.showUnavailable(); return; }
    if (!this.started) { this.started = true; this.begin(); }
    var self = this;
    if (!this.inline) setTimeout(function () { if (!self.bar.hidden && !self.input.disabled) self.input.focus(); else self.panel.querySelector("button").focus(); }, 0);
  };

  Widget.prototype.close = function () {
    if (this.inline) return;
    this.opened = false;
    this.panel.hidden = true;
    this.wrap.classList.remove("open");
    if (this.launcher) this.launcher.setAttribute("aria-expanded", "false");
  };

  Widget.prototype.begin = function () {
    var saved = store.get(this.key);
    if (saved && saved.conversationId && saved.visitorToken) {
      this.live = false;
      this.attach({ id: saved.conversationId, token: saved.visitorToken }, true);
    } else {
      this.startNew();
    }
  };

  Widget.prototype.startNew = function () {
    var self = this;
    this.live = true;
    this.showTyping();
    gql(Q_START, { b: this.bot, v: this.variables }).then(function (d) {
      var s = d.startConversation;
      store.set(self.key, { conversationId: s.conversationId, visitorToken: s.visitorToken });
      self.attach({ id: s.conversationId, token: s.visitorToken }, false);
    }, function (e) { self.failed(e); });
  };

  Widget.prototype.attach = function (conv, resumed) {
    var self = this;
    this.conv = conv; this.ended = false; this.resumed = resumed;
    this.events = new Events(conv, function (ev) { self.queue.push(ev); self.pump(); }, function (e) {
      if (resumed && e.code === "NOT_FOUND" && !self.lastShown) { store.del(self.key); self.startNew(); return; }
      self.failed(e);
    });
    this.events.connect();
  };

  Widget.prototype.failed = function (e) {
    this.hideTyping();
    if (e.code === "FORBIDDEN") { this.unavailable = "Sorry, this chat is not available on this website."; this.showUnavailable(); return; }
    var msg = e.code === "RATE_LIMITED" ? "Too many messages at once. Please wait a moment and try again."
      : e.code === "NETWORK" ? "We could not reach the chat. Please check your connection and try again."
      : "Something went wrong. Please try again.";
    this.notice(msg);
  };

  Widget.prototype.notice = function (text) {
    this.log.appendChild(el("p", { "class": "notice", role: "alert" }, text));
    this.scroll();
  };

  /* Shows queued events one by one, with a pause between consecutive bot messages of a live
   * exchange (a replay after a reload shows at once): the bot's typingDelayMs, else a short
   * default. */
  Widget.prototype.pump = function () {
    if (this.busy) return;
    var ev = this.queue.shift();
    if (!ev) return;
    var self = this;
    var botSide = ev.kind !== "VISITOR_MESSAGE";
    var pause = this.live && botSide && this.lastShown && this.lastShown !== "VISITOR_MESSAGE" && ev.kind !== "ENDED" ? (this.typingDelay || PAUSE) : 0;
    if (!pause) { this.show(ev); this.pump(); return; }
    this.busy = true;
    this.showTyping();
    setTimeout(function () { self.busy = false; self.show(ev); self.pump(); }, pause);
  };

  Widget.prototype.show = function (ev) {
    this.lastShown = ev.kind;
    if (ev.kind !== "VISITOR_MESSAGE") this.hideTyping();
    switch (ev.kind) {
      case "BOT_MESSAGE":
        this.message("bot", ev.text);
        break;
      case "QUESTION":
        if (ev.text) this.message("bot", ev.text);
        this.setInput(ev.input || { type: "TEXT" });
        break;
      case "VISITOR_MESSAGE":
        this.message("visitor", ev.text);
        this.setInput(null);
        this.showTyping();
        break;
      case "INVALID_ANSWER":
        this.log.appendChild(el("div", { "class": "invalid", "data-parley": "invalid", role: "alert" }, ev.text || "That answer is not valid."));
        break;
      case "ENDED":
        if (ev.text) this.message("bot", ev.text);
        this.finish();
        break;
      case "REDIRECT":
        // A link the visitor follows (navigating on our own would repeat on every resume).
        if (/^https?:\/\//i.test(ev.text || "")) {
          var a = el("a", { "class": "msg", "data-parley": "message", "data-from": "bot", href: ev.text, target: "_blank", rel: "noopener noreferrer" }, ev.text);
          this.log.appendChild(a);
        }
        break;
    }
    this.scroll();
  };

  Widget.prototype.message = function (from, text) {
    if (text == null || text === "") return;
    this.log.appendChild(el("div", { "class": "msg", "data-parley": "message", "data-from": from }, text));
  };

  Widget.prototype.scroll = function () {
    var log = this.log;
    if (this.typing.parentNode === log) log.appendChild(this.typing);
    log.scrollTop = log.scrollHeight;
  };

  Widget.prototype.showTyping = function () {
    this.typing.hidden = false;
    this.log.appendChild(this.typing);
    this.log.scrollTop = this.log.scrollHeight;
  };
  Widget.prototype.hideTyping = function () { this.typing.hidden = true; };

  var MODES = {
    TEXT: { type: "text", inputmode: "text", autocomplete: "off", placeholder: "Type your answer\u2026" },
    EMAIL: { type: "email", inputmode: "email", autocomplete: "email", placeholder: "name@example.com" },
    PHONE: { type: "tel", inputmode: "tel", autocomplete: "tel", placeholder: "Your phone number" },
    NUMBER: { type: "text", inputmode: "decimal", autocomplete: "off", placeholder: "A number" },
    URL: { type: "url", inputmode: "url", autocomplete: "url", placeholder: "https://\u2026" },
    DATE: { type: "date", inputmode: "text", autocomplete: "off", placeholder: "YYYY-MM-DD" },
    MULTI_CHOICE: { type: "text", inputmode: "text", autocomplete: "off", placeholder: "Pick one or more, then send" }
  };
  /* Questions answered by one click on a button. */
  var PICK_ONE = { CHOICE: 1, RATING: 1, YES_NO: 1 };

  /* The answer controls for a question's input, or none (waiting, ended). */
  Widget.prototype.setInput = function (input) {
    var self = this;
    this.pending = input;
    this.choices.textContent = "";
    this.choices.hidden = true;
    this.bar.hidden = this.ended || !!this.unavailable;
    var on = !!input && !PICK_ONE[input.type];
    this.input.disabled = !on; this.send.disabled = !on;
    if (input && input.type === "MULTI_CHOICE") {
      /* Buttons add or remove their label in the text field; Send sends the list. */
      (input.choices || []).forEach(function (c) {
        var b = el("button", { "class": "choice", type: "button", "data-parley": "choice", "aria-pressed": "false" }, c.label);
        b.addEventListener("click", function () {
          var picked = self.input.value.split(",").map(function (s) { return s.trim(); }).filter(Boolean);
          var at = picked.indexOf(c.label);
          if (at >= 0) picked.splice(at, 1); else picked.push(c.label);
          b.setAttribute("aria-pressed", at >= 0 ? "false" : "true");
          self.input.value = picked.join(", ");
        });
        self.choices.appendChild(b);
      });
      this.choices.hidden = false;
    }
    if (input && PICK_ONE[input.type]) {
      this.bar.hidden = true;
      (input.choices || []).forEach(function (c) {
        var b = el("button", { "class": "choice", type: "button", "data-parley": "choice" }, c.label);
        b.addEventListener("click", function () { self.submit(c.label); });
        self.choices.appendChild(b);
      });
      this.choices.hidden = false;
      if (this.opened && this.live && this.root.activeElement !== null) {
        var first = this.choices.querySelector("button"); if (first) first.focus();
      }
      return;
    }
    var mode = MODES[(input && input.type) || "TEXT"] || MODES.TEXT;
    this.input.type = mode.type;
    this.input.setAttribute("inputmode", mode.inputmode);
    this.input.setAttribute("autocomplete", mode.autocomplete);
    this.input.placeholder = mode.placeholder;
    if (on && this.opened && (this.live || this.root.activeElement)) this.input.focus();
  };

  Widget.prototype.submit = function (text) {
    var self = this;
    text = String(text == null ? "" : text).trim();
    if (!text || !this.conv || !this.pending || this.sending) return;
    var conv = this.conv;
    this.sending = true;
    this.live = true;
    this.input.disabled = true; this.send.disabled = true;
    Array.prototype.forEach.call(this.choices.querySelectorAll("button"), function (b) { b.disabled = true; });
    gql(Q_ANSWER, { c: conv.id, t: conv.token, x: text }).then(function () {
      self.sending = false;
      if (self.conv !== conv) return;
      self.input.value = "";
    }, function (e) {
      self.sending = false;
      if (self.conv !== conv) return;
      self.setInput(self.pending);
      self.failed(e);
    });
  };

  Widget.prototype.finish = function () {
    this.ended = true;
    this.hideTyping();
    this.setInput(null);
    this.bar.hidden = true;
    this.end.hidden = false;
    if (this.opened && this.live) this.restartBtn.focus();
  };

  Widget.prototype.restart = function () {
    if (this.events) this.events.stop();
    store.del(this.key);
    this.queue = []; this.busy = false; this.lastShown = null; this.ended = false; this.conv = null;
    this.log.textContent = "";
    this.end.hidden = true;
    this.setInput(null);
    if (this.unavailable) { this.shownUnavailable = false; this.showUnavailable(); return; }
    this.started = true;
    this.startNew();
  };

  Widget.prototype.destroy = function () {
    if (this.events) this.events.stop();
    if (this.host.parentNode) this.host.parentNode.removeChild(this.host);
  };

  var current = null;
  function init(opts) {
    if (!opts || !opts.bot) throw new Error("Parley.init needs { bot: BOT_ID }");
    if (current) current.destroy();
    current = new Widget(opts);
    return current;
  }

  window.Parley = {
    __parley: true,
    init: init,
    open: function () { if (current) current.open(); },
    close: function () { if (current) current.close(); },
    restart: function () {
      if (!current) return;
      if (!current.started) { store.del(current.key); current.open(); } else { current.open(); current.restart(); }
    }
  };

  var ds = script ? script.dataset : null;
  if (ds && ds.parleyBot) {
    var run = function () {
      if (ds.parleyPage === "true") {
        /* The hosted chat page (GET /chat/{botId}): the chat fills the window. */
        document.documentElement.style.height = "100%";
        document.body.style.height = "100%";
        document.body.style.margin = "0";
        document.body.style.background = "#f3f4f6";
        var t = ds.parleyTarget && document.querySelector(ds.parleyTarget);
        if (t) { t.style.height = "100%"; t.style.maxWidth = "720px"; t.style.margin = "0 auto"; }
      }
      init({ bot: ds.parleyBot, target: ds.parleyTarget || null, open: ds.parleyOpen === "true" });
    };
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
    else run();
  }
})();
