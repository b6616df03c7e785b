// Keyboard: one listener on the document. Single keys act only when the reader isn't typing; Escape and
// Ctrl+Enter also work inside the verdict form.

const TYPING = new Set(['TEXTAREA', 'SELECT']);
const NOT_TEXT = new Set(['checkbox', 'radio', 'range', 'button', 'submit', 'reset']);

function isTyping(el) {
  if (!(el instanceof HTMLElement)) return false;
  if (el.isContentEditable || TYPING.has(el.tagName)) return true;
  return el.tagName === 'INPUT' && !NOT_TEXT.has(el.type);
}

/** handlers: {next, prev, open, escape, accept, amend, reject, submit, overlay, opacity(d), overlayNumber(n),
 * slice(d), filter, help}; next/prev/open get the event (its timeStamp starts the clock). */
export function bindKeys(k) {
  document.addEventListener('keydown', (e) => {
    if (e.defaultPrevented || e.isComposing) return;
    const dialog = document.querySelector('dialog[open]');
    if (dialog) {
      if (e.key === '?') { e.preventDefault(); dialog.close(); }
      return; // Escape closes it natively
    }
    if (e.key === 'Escape') {
      if (k.escape(e)) e.preventDefault();
      return;
    }
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      if (k.submit()) e.preventDefault();
      return;
    }
    if (isTyping(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
    const onControl = e.target instanceof HTMLElement && e.target.closest('button, a[href], summary, input, select');
    let handled = true;
    switch (e.key) {
      case 'j': k.next(e); break;
      case 'k': k.prev(e); break;
      case 'ArrowDown':
      case 'ArrowUp':
        if (onControl && e.target.matches('input[type=range]')) { handled = false; break; }
        if (e.key === 'ArrowDown') k.next(e); else k.prev(e);
        break;
      case 'Enter':
        if (onControl) { handled = false; break; } // the focused button or link acts itself
        k.open(e);
        break;
      case 'a': k.accept(); break;
      case 'e': k.amend(); break;
      case 'r': k.reject(); break;
      case 'o': k.overlay(); break;
      case '[': k.opacity(-0.1); break;
      case ']': k.opacity(0.1); break;
      case ',': k.slice(-1); break;
      case '.': k.slice(1); break;
      case '/': k.filter(); break;
      case '?': k.help(); break;
      default:
        if (/^[1-9]$/.test(e.key)) k.overlayNumber(Number(e.key));
        else handled = false;
    }
    if (handled) e.preventDefault();
  });
}
