// Ollama's template.Execute (template/template.go at fb30760), its api types replaced by
// local ones, to check gateway/dialects/ollama_template.py against Go. Reads JSON lines
// {"Template", "Prompt", "Suffix", "Messages": [[role, content], ...]} (Messages as
// GenerateHandler builds them), writes JSON lines {"out": ...} or {"err": ...}.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/template"
	"text/template/parse"
)

type Message struct{ Role, Content string }

type templateMessage struct {
	Role       string
	Content    string
	Thinking   string
	Images     [][]byte
	ToolCalls  []struct{ ID string }
	ToolName   string
	ToolCallID string
}

type templateTools []struct{ Type string }

func (t templateTools) String() string { b, _ := json.Marshal(t); return string(b) }

var response = parse.ActionNode{NodeType: parse.NodeAction, Pipe: &parse.PipeNode{NodeType: parse.NodePipe,
	Cmds: []*parse.CommandNode{{NodeType: parse.NodeCommand, Args: []parse.Node{&parse.FieldNode{NodeType: parse.NodeField, Ident: []string{"Response"}}}}}}}

var funcs = template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func vars(t *template.Template) ([]string, error) {
	var out []string
	for _, tt := range t.Templates() {
		for _, n := range tt.Root.Nodes {
			v, err := Identifiers(n)
			if err != nil {
				return nil, err
			}
			for _, s := range v {
				out = append(out, strings.ToLower(s))
			}
		}
	}
	return out, nil
}

func Identifiers(n parse.Node) ([]string, error) {
	switch n := n.(type) {
	case *parse.ListNode:
		var names []string
		for _, n := range n.Nodes {
			i, err := Identifiers(n)
			if err != nil {
				return names, err
			}
			names = append(names, i...)
		}
		return names, nil
	case *parse.TemplateNode:
		if n.Pipe == nil {
			return nil, errors.New("undefined template specified")
		}
		return Identifiers(n.Pipe)
	case *parse.ActionNode:
		return Identifiers(n.Pipe)
	case *parse.BranchNode:
		names, err := Identifiers(n.Pipe)
		if err != nil {
			return names, err
		}
		for _, n := range []*parse.ListNode{n.List, n.ElseList} {
			if n != nil {
				i, err := Identifiers(n)
				if err != nil {
					return names, err
				}
				names = append(names, i...)
			}
		}
		return names, nil
	case *parse.IfNode:
		return Identifiers(&n.BranchNode)
	case *parse.RangeNode:
		return Identifiers(&n.BranchNode)
	case *parse.WithNode:
		return Identifiers(&n.BranchNode)
	case *parse.PipeNode:
		var names []string
		for _, c := range n.Cmds {
			for _, a := range c.Args {
				i, err := Identifiers(a)
				if err != nil {
					return names, err
				}
				names = append(names, i...)
			}
		}
		return names, nil
	case *parse.FieldNode:
		return n.Ident, nil
	case *parse.VariableNode:
		return n.Ident, nil
	}
	return nil, nil
}

func deleteNode(n parse.Node, fn func(parse.Node) bool) parse.Node {
	var walk func(n parse.Node) parse.Node
	walk = func(n parse.Node) parse.Node {
		if fn(n) {
			return nil
		}
		switch t := n.(type) {
		case *parse.ListNode:
			var nodes []parse.Node
			for _, c := range t.Nodes {
				if n := walk(c); n != nil {
					nodes = append(nodes, n)
				}
			}
			t.Nodes = nodes
			return t
		case *parse.IfNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.WithNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.RangeNode:
			t.BranchNode = *walk(&t.BranchNode).(*parse.BranchNode)
		case *parse.BranchNode:
			t.List = walk(t.List).(*parse.ListNode)
			if t.ElseList != nil {
				t.ElseList = walk(t.ElseList).(*parse.ListNode)
			}
		case *parse.ActionNode:
			n := walk(t.Pipe)
			if n == nil {
				return nil
			}
			t.Pipe = n.(*parse.PipeNode)
		case *parse.PipeNode:
			var commands []*parse.CommandNode
			for _, c := range t.Cmds {
				var args []parse.Node
				for _, a := range c.Args {
					if n := walk(a); n != nil {
						args = append(args, n)
					}
				}
				if len(args) == 0 {
					return nil
				}
				c.Args = args
				commands = append(commands, c)
			}
			if len(commands) == 0 {
				return nil
			}
			t.Cmds = commands
		}
		return n
	}
	return walk(n)
}

func collate(msgs []Message) (string, []*Message) {
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role && msgs[i].Role != "tool" {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	return strings.Join(system, "\n\n"), collated
}

func execute(src, promptIn, suffix string, msgsIn []Message) (string, error) {
	tmpl, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(src)
	if err != nil {
		return "", err
	}
	vs, err := vars(tmpl)
	if err != nil {
		return "", err
	}
	if !contains(vs, "messages") && !contains(vs, "response") {
		tmpl.Tree.Root.Nodes = append(tmpl.Tree.Root.Nodes, &response)
	}
	var w bytes.Buffer
	think := map[string]any{"Think": false, "ThinkLevel": "", "IsThinkSet": false}
	with := func(m map[string]any) map[string]any {
		for k, v := range think {
			m[k] = v
		}
		return m
	}
	system, messages := collate(msgsIn)
	if promptIn != "" && suffix != "" {
		err := tmpl.Execute(&w, with(map[string]any{"Prompt": promptIn, "Suffix": suffix, "Response": ""}))
		return w.String(), err
	} else if contains(vs, "messages") {
		var tm []*templateMessage
		for _, m := range messages {
			tm = append(tm, &templateMessage{Role: m.Role, Content: m.Content})
		}
		var tools templateTools
		err := tmpl.Execute(&w, with(map[string]any{"System": system, "Messages": tm, "Tools": tools, "Response": ""}))
		return w.String(), err
	}
	system = ""
	var b bytes.Buffer
	var prompt, resp string
	for _, m := range messages {
		exec := func() error {
			if err := tmpl.Execute(&b, with(map[string]any{"System": system, "Prompt": prompt, "Response": resp})); err != nil {
				return err
			}
			system, prompt, resp = "", "", ""
			return nil
		}
		switch m.Role {
		case "system":
			if prompt != "" || resp != "" {
				if err := exec(); err != nil {
					return "", err
				}
			}
			system = m.Content
		case "user":
			if resp != "" {
				if err := exec(); err != nil {
					return "", err
				}
			}
			prompt = m.Content
		case "assistant":
			resp = m.Content
		}
	}
	var cut bool
	nodes := deleteNode(tmpl.Root.Copy(), func(n parse.Node) bool {
		if field, ok := n.(*parse.FieldNode); ok && contains(field.Ident, "Response") {
			cut = true
			return false
		}
		return cut
	})
	tree := parse.Tree{Root: nodes.(*parse.ListNode)}
	if err := template.Must(template.New("").AddParseTree("", &tree)).Execute(&b, with(map[string]any{"System": system, "Prompt": prompt, "Response": resp})); err != nil {
		return "", err
	}
	return b.String(), nil
}

type req struct {
	Template, Prompt, Suffix string
	Messages                 [][2]string
}

func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	for sc.Scan() {
		var r req
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			panic(err)
		}
		var msgs []Message
		for _, m := range r.Messages {
			msgs = append(msgs, Message{m[0], m[1]})
		}
		func() {
			defer func() {
				if p := recover(); p != nil {
					enc.Encode(map[string]string{"err": fmt.Sprint("panic: ", p)})
				}
			}()
			out, err := execute(r.Template, r.Prompt, r.Suffix, msgs)
			if err != nil {
				enc.Encode(map[string]string{"err": err.Error()})
			} else {
				enc.Encode(map[string]string{"out": out})
			}
		}()
	}
}
