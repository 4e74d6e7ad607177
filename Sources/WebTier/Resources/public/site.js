// Progressive enhancement only: every page works without this file.
document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) event.preventDefault();
});

// A photo being processed: poll its job, then show the new photo.
for (const note of document.querySelectorAll("[data-job]")) {
  const poll = async () => {
    const response = await fetch("/jobs/" + note.getAttribute("data-job"), { credentials: "same-origin" });
    const job = response.ok ? await response.json() : { state: "failed", error: "unknown job" };
    if (job.state === "done") { window.location.replace(window.location.pathname); return; }
    if (job.state === "failed") { note.textContent = "The photo could not be processed: " + job.error; return; }
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 500);
}
