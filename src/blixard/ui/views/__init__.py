"""One module per page; importing them registers their routes on `blixard.ui.web.router`."""
