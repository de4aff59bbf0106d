package kit

import (
	"github.com/hookstream/hookstream/domain"
	"github.com/hookstream/hookstream/eventstore"
)

// NewEvents turns a fold's decisions into the events to append, each with md.
func NewEvents(decided []domain.Decided, md eventstore.Metadata) []eventstore.NewEvent {
	out := make([]eventstore.NewEvent, len(decided))
	for i, d := range decided {
		out[i] = eventstore.NewEvent{Type: d.Type, Payload: d.Payload, Metadata: md}
	}
	return out
}

// FoldDelivery folds a delivery stream's events into its state.
func FoldDelivery(stream []eventstore.Event) (*domain.Delivery, error) {
	d := &domain.Delivery{}
	for _, ev := range stream {
		if err := d.Apply(ev.StreamVersion, ev.Type, ev.Payload); err != nil {
			return nil, err
		}
	}
	return d, nil
}
