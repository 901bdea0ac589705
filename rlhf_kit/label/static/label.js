// Keyboard and ranking for the labeling forms; the server validates everything again.
"use strict";

function guardDoubleSubmit(form) {
  // The store keeps one label per task whatever arrives; this only spares the labeler a second request.
  form.addEventListener("submit", (event) => {
    if (form.dataset.sent) { event.preventDefault(); return; }
    form.dataset.sent = "1";
  });
}

function initRank(form) {
  const cards = [...form.querySelectorAll(".response")];
  const byLetter = Object.fromEntries(cards.map((c) => [c.dataset.letter, c]));
  let groups = cards.map((c) => [c.dataset.letter]); // ranking, best first; a group of several is a tie
  let current = 0;

  const groupOf = (letter) => groups.findIndex((g) => g.includes(letter));
  const letter = () => cards[current].dataset.letter;

  function render() {
    const list = document.getElementById("ranking");
    list.replaceChildren();
    groups.forEach((group, rank) => {
      const item = document.createElement("li");
      item.className = group.length > 1 ? "tie" : "";
      for (const l of group) {
        const chip = document.createElement("span");
        chip.className = "chip" + (l === letter() ? " current" : "");
        chip.textContent = l;
        item.append(chip);
        byLetter[l].querySelector(".rank-input").value = String(rank);
      }
      list.append(item);
    });
    cards.forEach((c, i) => c.classList.toggle("current", i === current));
  }

  function move(l, step) {
    const gi = groupOf(l);
    const group = groups[gi];
    if (group.length > 1) { // leave the tie, just above or below it
      group.splice(group.indexOf(l), 1);
      groups.splice(step < 0 ? gi : gi + 1, 0, [l]);
    } else if (groups[gi + step]) {
      [groups[gi], groups[gi + step]] = [groups[gi + step], groups[gi]];
    }
  }

  function tie(l) { // join the group above
    const gi = groupOf(l);
    if (gi === 0) return;
    groups[gi].splice(groups[gi].indexOf(l), 1);
    groups[gi - 1].push(l);
    if (!groups[gi].length) groups.splice(gi, 1);
  }

  function sortByRating() { // equal ratings start tied
    const rating = (l) => Number((form.querySelector(`input[name="score_${byLetter[l].dataset.index}"]:checked`) || {}).value || 0);
    const levels = [...new Set(cards.map((c) => rating(c.dataset.letter)))].sort((a, b) => b - a);
    groups = levels.map((v) => cards.map((c) => c.dataset.letter).filter((l) => rating(l) === v));
  }

  cards.forEach((card, i) => card.addEventListener("click", () => { current = i; render(); }));
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (/^[1-7]$/.test(key)) {
      const radio = form.querySelector(`input[name="score_${cards[current].dataset.index}"][value="${key}"]`);
      radio.checked = true;
    } else if (key === "ArrowDown" && !event.shiftKey || key === "j") {
      current = Math.min(current + 1, cards.length - 1);
      cards[current].scrollIntoView({block: "nearest"});
    } else if (key === "ArrowUp" && !event.shiftKey || key === "k") {
      current = Math.max(current - 1, 0);
      cards[current].scrollIntoView({block: "nearest"});
    } else if (key === "u" || key === "ArrowUp") {
      move(letter(), -1);
    } else if (key === "d" || key === "ArrowDown") {
      move(letter(), 1);
    } else if (key === "t") {
      tie(letter());
    } else if (key === "s") {
      sortByRating();
    } else if (key === "Enter") {
      form.requestSubmit();
    } else {
      return;
    }
    event.preventDefault();
    render();
  });
  render();
}

function initDemo(form) {
  const turns = document.getElementById("turns");
  const use = document.getElementById("use-suggestion");
  if (use) {
    use.addEventListener("click", () => {
      const first = document.getElementById("turn_0");
      first.value = document.getElementById("suggestion-text").textContent;
      first.focus();
    });
  }
  document.getElementById("add-exchange").addEventListener("click", () => {
    const n = turns.querySelectorAll("textarea").length;
    if (n + 2 > 8) return;
    for (const [i, role] of [[n, "user"], [n + 1, "assistant"]]) {
      const label = document.createElement("label");
      label.className = "turn " + role;
      label.append(role + " ");
      const area = document.createElement("textarea");
      area.name = area.id = "turn_" + i;
      area.rows = 3;
      area.required = true;
      label.append(area);
      turns.append(label);
    }
  });
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.ctrlKey) { event.preventDefault(); form.requestSubmit(); }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form").forEach(guardDoubleSubmit);
  const rank = document.getElementById("rank-form");
  if (rank) initRank(rank);
  const demo = document.getElementById("demo-form");
  if (demo) initDemo(demo);
});
